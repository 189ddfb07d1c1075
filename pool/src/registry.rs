//! The registry: what the pool handle and its driver threads share.
//!
//! It holds the job queue (one crossbeam channel; workers never touch it) and its doorbell,
//! the seats of the drivers, the per-worker statistics table, the pool's counters, and its
//! closed, terminated and broken states. The handle ([`crate::Pool`]) submits jobs and closes the queue here;
//! drivers take jobs from it, requeue what a dead worker did not start, and tally outcomes.
//! Sizing decisions (growing, the restart breaker) are in `sizing`, the drivers in `driver`.
//!
//! ## The doorbell
//!
//! Idle drivers do not wait on the job queue itself but on a doorbell rung after jobs are
//! queued, so that a map's first chunk for every worker is queued before the first driver
//! wakes (`Pool::map_async_inner` queues them together, the rest as they come). Waiting on the
//! queue, each chunk's `send` woke a driver at once; on a busy machine that driver (and the
//! worker it woke) preempted the caller's thread before it queued the next chunk, and with
//! every CPU looking busy the scheduler left that thread waiting for a time slice (3 ms on the
//! 2-vCPU VM) while the other CPU sat idle: its worker started each map that much late.
//!
//! | who | does |
//! |---|---|
//! | a caller (or a driver requeueing) | queues its jobs, then rings once |
//! | an idle driver, rung (or anyway, before it sleeps) | takes a job if one is queued; rings again if more are left, waking the next idle driver |
//!
//! No job waits while a driver sleeps: a ring is buffered while no driver waits, and every
//! driver looks at the queue before it waits for the bell; a ring that finds the queue empty
//! (another driver took the job) costs one spurious wake-up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::api::Settings;
use crate::driver::Seat;
use crate::error::{PoolError, TaskError};
use crate::job::Job;
use crate::spare::Spare;
use crate::stats::{PoolStats, WorkerStats};

/// What the drivers and the pool handle share.
pub(crate) struct Registry {
    pub(crate) settings: Settings,
    tx: Sender<Job>,
    rx: Receiver<Job>,
    /// The doorbell (see the module docs): one message per ring, a few buffered.
    bell_tx: Sender<()>,
    bell_rx: Receiver<()>,
    closed: AtomicBool,
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    next_job: AtomicU64,
    pub(crate) next_driver: AtomicUsize,
    /// Live drivers (each owns one worker seat), including places reserved by `maybe_grow`.
    pub(crate) workers: AtomicUsize,
    /// Drivers waiting for a job.
    pub(crate) idle: AtomicUsize,
    pub(crate) terminated: AtomicBool,
    /// Why the pool stopped taking work (the restart breaker tripped).
    pub(crate) broken: Mutex<Option<PoolError>>,
    /// Set once `broken` holds an error: what `takes_work` reads on every call made on a
    /// caller's thread, instead of locking `broken`.
    pub(crate) is_broken: AtomicBool,
    /// Recent worker start-up failures of the workers' own doing, for the breaker.
    pub(crate) failures: Mutex<Vec<Instant>>,
    /// Recent deaths from outside of starting workers, for the breaker's higher limit.
    pub(crate) outside_failures: Mutex<Vec<Instant>>,
    pub(crate) drivers: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) seats: RwLock<Vec<Seat>>,
    /// Per-seat statistics by driver id. A `BTreeMap`: a handful of small integer keys, looked
    /// up several times per `apply`, where a `HashMap`'s SipHash cost more than the search.
    pub(crate) table: Mutex<BTreeMap<usize, WorkerStats>>,
    /// The warm spare, if the pool keeps one (`settings.warm_spare`).
    pub(crate) spare: Spare,
    submitted: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
    /// A cluster pool's view of its nodes, for `stats` (feature `nats`).
    #[cfg(feature = "nats")]
    pub(crate) nodes: std::sync::OnceLock<Box<dyn Fn() -> Vec<crate::NodeStats> + Send + Sync>>,
    /// A cluster pool's way to send a lone job from the caller's thread (feature `nats`; see
    /// `cluster::client`): hands the job back when it cannot.
    #[cfg(feature = "nats")]
    pub(crate) direct: std::sync::OnceLock<DirectFn>,
}

impl Registry {
    /// Whether this pool runs its jobs on a cluster (feature `nats`): they leave as messages,
    /// so large arguments are not encoded into bulk areas (`wire/shared_args.rs`).
    pub(crate) fn is_cluster(&self) -> bool {
        #[cfg(feature = "nats")]
        return self.nodes.get().is_some();
        #[cfg(not(feature = "nats"))]
        false
    }
}

/// See [`Registry::direct`].
#[cfg(feature = "nats")]
pub(crate) type DirectFn = Box<dyn Fn(Job) -> Result<(), Job> + Send + Sync>;

/// Rings the doorbell keeps while no driver waits: more than one is never needed (each driver
/// looks at the queue before it waits), a few spare the ringers a failed `try_send` now and then.
const BELL_BUFFER: usize = 4;

/// Locks `m`, ignoring poisoning (every critical section leaves its data consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// An empty registry: no drivers yet, the queue open.
    pub(crate) fn new(settings: Settings) -> Registry {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let (bell_tx, bell_rx) = crossbeam_channel::bounded(BELL_BUFFER);
        Registry {
            tx,
            rx,
            bell_tx,
            bell_rx,
            closed: AtomicBool::new(false),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            next_job: AtomicU64::new(1),
            next_driver: AtomicUsize::new(0),
            workers: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            terminated: AtomicBool::new(false),
            broken: Mutex::new(None),
            is_broken: AtomicBool::new(false),
            failures: Mutex::new(Vec::new()),
            outside_failures: Mutex::new(Vec::new()),
            drivers: Mutex::new(Vec::new()),
            seats: RwLock::new(Vec::new()),
            table: Mutex::new(BTreeMap::new()),
            spare: Spare::default(),
            submitted: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            #[cfg(feature = "nats")]
            nodes: std::sync::OnceLock::new(),
            #[cfg(feature = "nats")]
            direct: std::sync::OnceLock::new(),
            settings,
        }
    }

    /// A fresh job id.
    pub(crate) fn next_job_id(&self) -> u64 {
        self.next_job.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the pool accepts work run from the caller's thread (open and not broken).
    pub(crate) fn takes_work(&self) -> bool {
        !self.closed.load(Ordering::SeqCst) && !self.is_broken.load(Ordering::SeqCst)
    }

    /// Queues a job from the caller, and grows the pool if it should.
    pub(crate) fn submit(this: &Arc<Registry>, job: Job) -> Result<(), PoolError> {
        if let Some(e) = lock(&this.broken).clone() {
            return Err(e);
        }
        if this.closed.load(Ordering::SeqCst) {
            return Err(PoolError::Closed);
        }
        let count = job.count;
        this.count_submitted(count);
        if this.tx.send(job).is_err() {
            return Err(PoolError::Closed);
        }
        this.ring();
        Registry::maybe_grow(this);
        Ok(())
    }

    /// Queues the jobs of one call (a map's chunks) together, then wakes one idle driver,
    /// which wakes the next while jobs are left (see the module docs). Nothing is queued when
    /// the pool does not take work.
    pub(crate) fn submit_all(this: &Arc<Registry>, jobs: Vec<Job>) -> Result<(), PoolError> {
        if let Some(e) = lock(&this.broken).clone() {
            return Err(e);
        }
        if this.closed.load(Ordering::SeqCst) {
            return Err(PoolError::Closed);
        }
        this.count_submitted(jobs.iter().map(|j| j.count).sum());
        for job in jobs {
            if let Err(e) = this.tx.send(job) {
                // The receiver lives as long as the registry: never taken.
                this.finish_job_error(&e.0, &TaskError::Terminated);
            }
        }
        this.ring();
        Registry::maybe_grow(this);
        Ok(())
    }

    /// Rings the doorbell: wakes one idle driver, or is kept for the next driver that waits.
    /// A full bell already holds rings enough to wake a driver that will look at the queue.
    #[inline]
    fn ring(&self) {
        let _ = self.bell_tx.try_send(());
    }

    /// Counts `count` submitted tasks (also for jobs that bypass the queue).
    pub(crate) fn count_submitted(&self, count: u64) {
        self.submitted.fetch_add(count, Ordering::Relaxed);
        self.in_flight.fetch_add(count, Ordering::Relaxed);
    }

    /// Whether jobs wait in the queue.
    pub(crate) fn jobs_waiting(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Puts a job back in the queue (also after close: it was accepted before).
    pub(crate) fn tx_requeue(&self, job: Job) -> Result<(), ()> {
        if self.terminated.load(Ordering::SeqCst) {
            self.finish_job_error(&job, &TaskError::Terminated);
            return Err(());
        }
        self.tx.send(job).map_err(|e| {
            self.finish_job_error(&e.0, &TaskError::Terminated);
        })?;
        self.ring();
        Ok(())
    }

    /// The next job for an idle driver; `None` when the driver should stop (closed and
    /// drained), `Some(Err(()))` after `idle` passed with no job or when `wake` received (the
    /// driver's own nudge: its worker was lost on a caller's thread and awaits replacement).
    pub(crate) fn next_job(
        &self,
        idle: Option<Duration>,
        wake: &Receiver<()>,
    ) -> Option<Result<Job, ()>> {
        if self.closed.load(Ordering::SeqCst) {
            return self.rx.try_recv().ok().map(Ok);
        }
        let wait = idle.unwrap_or(Duration::from_secs(3600));
        let until = Instant::now().checked_add(wait);
        loop {
            if let Ok(job) = self.rx.try_recv() {
                if !self.rx.is_empty() {
                    self.ring();
                }
                return Some(Ok(job));
            }
            let left = until.map_or(wait, |t| t.saturating_duration_since(Instant::now()));
            crossbeam_channel::select! {
                recv(self.bell_rx) -> _ => {}
                recv(self.stop_rx) -> _ => return self.rx.try_recv().ok().map(Ok),
                recv(wake) -> _ => return Some(Err(())),
                default(left) => return Some(Err(())),
            }
        }
    }

    /// Fails every argument of `job` with `error`.
    pub(crate) fn finish_job_error(&self, job: &Job, error: &TaskError) {
        self.tally(0, job.count);
        job.fail_all(error);
    }

    /// Fails argument `index` of `job` with `error`.
    pub(crate) fn deliver_error(&self, job: &Job, index: u64, error: TaskError) {
        self.tally(0, 1);
        job.sink.fail(index, error);
    }

    /// Counts outcomes once per batch (the counters are shared by every driver).
    pub(crate) fn tally(&self, ok: u64, failed: u64) {
        if ok > 0 {
            self.done.fetch_add(ok, Ordering::Relaxed);
        }
        if failed > 0 {
            self.failed.fetch_add(failed, Ordering::Relaxed);
        }
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(ok + failed))
            });
    }

    /// Stops accepting jobs; drivers drain the queue and stop.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        lock(&self.stop_tx).take();
        self.spare.stop();
    }

    /// Closes and fails every queued job with `error`.
    pub(crate) fn close_with(&self, error: &TaskError) {
        self.close();
        while let Ok(job) = self.rx.try_recv() {
            self.finish_job_error(&job, error);
        }
    }

    /// Closes, kills every worker and fails every queued job with `Terminated`.
    pub(crate) fn terminate(&self) {
        self.close();
        self.terminated.store(true, Ordering::SeqCst);
        for stats in lock(&self.table).values() {
            let _ = ipc_shm::os::kill(stats.pid, ipc_shm::os::Signal::SIGKILL);
        }
        self.spare.kill();
        while let Ok(job) = self.rx.try_recv() {
            self.finish_job_error(&job, &TaskError::Terminated);
        }
    }

    /// Joins every driver thread (drivers started meanwhile too), then the spare's keeper
    /// (which must outlive the workers it started, see `spare`).
    pub(crate) fn join_drivers(&self) {
        loop {
            let handles: Vec<_> = std::mem::take(&mut *lock(&self.drivers));
            if handles.is_empty() {
                break;
            }
            for h in handles {
                let _ = h.join();
            }
        }
        self.spare.join();
    }

    /// A snapshot of the counters and of every worker.
    pub(crate) fn stats(&self) -> PoolStats {
        let mut workers: Vec<WorkerStats> = lock(&self.table).values().cloned().collect();
        workers.sort_by_key(|w| w.pid);
        for w in &mut workers {
            if let Some((rss, cpu)) = ipc_shm::os::usage(w.pid) {
                w.rss_bytes = rss;
                w.cpu_time = cpu;
            }
            if let Some(since) = w.busy_since {
                w.current_task_runtime = Some(since.elapsed());
            }
        }
        PoolStats {
            submitted: self.submitted.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            queued: self.rx.len() as u64,
            workers,
            #[cfg(feature = "nats")]
            nodes: self.nodes.get().map(|f| f()).unwrap_or_default(),
            #[cfg(not(feature = "nats"))]
            nodes: Vec::new(),
        }
    }
}
