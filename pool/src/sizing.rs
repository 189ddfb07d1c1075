//! Sizing: how many workers the pool keeps, and when a worker is replaced.
//!
//! - *Growing* ([`Registry::maybe_grow`]): another driver starts when jobs wait and no worker
//!   is idle (or fewer than `min_idle` are), up to `max_workers`.
//! - *Shrinking* ([`Driver::idle_limit`], [`Driver::may_shrink`]): a driver idle for
//!   `idle_timeout` (or at once beyond `max_idle`) retires, never below `processes`.
//! - *Recycling* ([`Driver::after_task`]): a worker that ran about `max_tasks_per_child` tasks
//!   ([`jitter`]ed per worker) or grew past `max_memory_per_child` is replaced.
//! - *The restart breaker* ([`Registry::record_failure`]): workers that keep failing at
//!   start-up by their own doing (the initializer's error or panic, an exit, a crash) stop being
//!   replaced, and the pool fails its tasks with the reason. Workers killed from outside while
//!   they start count only at a rate [`OUTSIDE_FACTOR`] times higher.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::driver::{Driver, finish_worker};
use crate::error::PoolError;
use crate::registry::{Registry, lock};
use crate::start::StartFailure;
use crate::stats::WorkerState;

impl Registry {
    /// Starts another worker if jobs wait, nobody is idle and the pool may grow.
    pub(crate) fn maybe_grow(this: &Arc<Registry>) {
        let c = &this.settings;
        if this.workers.load(Ordering::SeqCst) >= c.max_workers
            || this.terminated.load(Ordering::SeqCst)
        {
            return;
        }
        let idle = this.idle.load(Ordering::SeqCst);
        let waiting = this.jobs_waiting();
        if !((waiting && idle == 0) || idle < c.min_idle) {
            return;
        }
        // Reserve a place below the limit, so racing callers never exceed it.
        let reserved = this
            .workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < c.max_workers).then_some(w + 1)
            })
            .is_ok();
        if reserved {
            let _ = crate::driver::spawn(this, None);
        }
    }

    /// Records a worker start-up failure; trips the breaker past the limit.
    ///
    /// The worker's own failures (its initializer's error or panic, an exit, a crash) count
    /// against `restart_limit` (default 5 in 10 s). Workers killed from outside while they start
    /// are no restart loop and count only against a limit [`OUTSIDE_FACTOR`] times higher over
    /// the same window, which ends a loop nobody can fix from inside (the OOM killer ending
    /// every new worker) but not a burst of kills (30 kills 1-4 ms apart pass).
    pub(crate) fn record_failure(&self, failure: &StartFailure) -> bool {
        let (limit, window) = self.settings.restart_limit;
        let (list, limit) = if failure.outside {
            (&self.outside_failures, limit.saturating_mul(OUTSIDE_FACTOR))
        } else {
            (&self.failures, limit)
        };
        let mut f = lock(list);
        let now = Instant::now();
        f.retain(|t| now.duration_since(*t) < window);
        f.push(now);
        if f.len() as u32 >= limit {
            let broken = match &failure.error {
                PoolError::InitializerFailed { .. } | PoolError::BuildMismatch { .. }
                    if !failure.outside =>
                {
                    failure.error.clone()
                }
                _ => PoolError::RestartLimit {
                    failures: f.len() as u32,
                    window,
                },
            };
            drop(f);
            lock(&self.broken).get_or_insert(broken.clone());
            self.is_broken.store(true, Ordering::SeqCst);
            self.close_with(&broken.into());
            return true;
        }
        false
    }
}

/// How many more deaths from outside than own failures the breaker tolerates in its window.
pub(crate) const OUTSIDE_FACTOR: u32 = 20;

impl Driver {
    /// How long this driver may wait idle before it considers shrinking the pool.
    pub(crate) fn idle_limit(&self) -> Option<Duration> {
        let c = &self.registry.settings;
        if c.max_workers <= c.processes && c.max_idle >= c.max_workers {
            return None;
        }
        let idle = self.registry.idle.load(Ordering::SeqCst);
        if idle >= c.max_idle {
            Some(Duration::from_millis(10))
        } else {
            c.idle_timeout
        }
    }

    pub(crate) fn may_shrink(&self) -> bool {
        let c = &self.registry.settings;
        let workers = self.registry.workers.load(Ordering::SeqCst);
        let idle = self.registry.idle.load(Ordering::SeqCst);
        workers > c.processes && idle + 1 > c.min_idle
    }

    /// Recycles the worker after a task if it reached its task or memory limit.
    pub(crate) fn after_task(&mut self) {
        let Some(worker) = &self.worker else { return };
        // The worker's `done` word is read only when there is a limit to check it against:
        // the worker writes it on every report, and reading it here would pull its cache line
        // across to this CPU and back on every `apply` round trip.
        let too_old = self
            .tasks_limit
            .is_some_and(|limit| worker.slot.words().done.load(Ordering::Relaxed) >= limit);
        let too_big = self
            .registry
            .settings
            .max_memory_per_child
            .is_some_and(|max| ipc_shm::os::rss(worker.pid).is_some_and(|rss| rss > max));
        if too_old || too_big {
            self.set_state(WorkerState::Retiring);
            // Start the replacement before the old worker goes, so the seat is back in service
            // as soon as a worker can be started; the old one exits and is reaped off this
            // thread. (If the start fails, the driver loop retries before the next job.)
            let old = self.worker.take();
            let _ = self.ensure_worker();
            if let Some(old) = old {
                let held = Arc::new(Mutex::new(Some(old)));
                let theirs = held.clone();
                let spawned = std::thread::Builder::new()
                    .name("pool-retire".into())
                    .spawn(move || {
                        if let Some(w) = lock(&theirs).take() {
                            finish_worker(w);
                        }
                    });
                if spawned.is_err()
                    && let Some(w) = lock(&held).take()
                {
                    finish_worker(w);
                }
            }
        }
    }
}

/// `n` give or take 10%, different per worker, so workers do not all restart at once.
pub(crate) fn jitter(n: u64, seed: u32) -> u64 {
    let spread = n / 10;
    if spread == 0 {
        return n.max(1);
    }
    let x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
    (n - spread + x % (2 * spread + 1)).max(1)
}
