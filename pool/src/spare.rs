//! The warm spare ([`PoolBuilder::warm_spare`](crate::PoolBuilder::warm_spare)): one worker
//! started and greeted ahead of need, which a driver takes at once when its worker dies.
//!
//! Replacing a dead worker costs a whole start: `fork` of the pool's process (its page tables:
//! milliseconds for a large process), or `exec` and the program's start-up (`Spawn`), then the
//! handshake and the initializer. With a spare, a driver whose worker died takes the spare
//! instead ([`Spare::take`]: a lock and a liveness check) and the *keeper* thread starts the
//! next spare in the background, [`SETTLE`] later: not while the seat that took the spare
//! serves the caller's next task. Started at once, the next spare's `fork` of a large pool
//! process (milliseconds, holding its memory map) held up that task's result: in a process of
//! 200 MiB with a 1-worker pool, the median from `WorkerLost` to the next result over 40
//! crashes went from 4.4-5.9 ms to 0.14-0.23 ms with `Fork` (3 interleaved rounds), and from
//! 0.33-0.38 ms to 0.21-0.23 ms with the fork server (whose p90 went from 1.9-3.6 ms to
//! 0.28-1.6 ms); `Spawn` measured alike either way.
//!
//! | state of the slot | who acts | next |
//! |---|---|---|
//! | empty, pool open | keeper starts a worker (start + handshake + initializer); after a spare was taken, only once [`SETTLE`] (5 ms) has passed | ready |
//! | ready | a driver takes it (if alive): in `lost`, or in `ensure_worker`, which also waits up to 100 ms for one being started | empty |
//! | ready, pool closed | keeper asks it to exit and reaps it | empty, keeper parked |
//! | any, pool terminated | `terminate` kills the ready or starting spare | empty |
//!
//! What it must never do, and why it does not:
//! - *run a task twice*: a spare has run no task; taken, it is the driver's worker exactly as a
//!   freshly started one (same statistics, task limit, cancel and death handling).
//! - *hide a death*: a spare found dead when taken (killed while idle, lost with its fork
//!   server) is reaped and dropped, and the driver starts its own worker as it would without a
//!   spare; a spare that fails to start (its initializer fails) is dropped, and the keeper
//!   waits [`RETRY`] before the next try, so that the drivers' own starts meet the failure and
//!   the restart breaker counts it as ever.
//! - *outlive its pool*: `PR_SET_PDEATHSIG` ties a `Fork` or `Spawn` worker to the *thread*
//!   that started it, so the keeper thread lives until every driver has ended (`Pool::join`
//!   stops it last), and the workers it started die with the pool's process as any other.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::registry::{Registry, lock};
use crate::start::{self, Worker};

/// How long the keeper waits after a spare failed to start before it tries again.
const RETRY: Duration = Duration::from_secs(1);
/// How long a driver waits for a spare being started before it starts its own worker (a
/// start takes a few milliseconds at most; a slow initializer is not worth waiting for twice).
const WAIT: Duration = Duration::from_millis(100);
/// How long the keeper lets the pool run after a spare was taken before it starts the next:
/// the seat that took the spare is serving the caller's next task meanwhile, and a start
/// running beside it would slow it down (a `fork` of a large pool process holds its memory map
/// for milliseconds, stalling the pool's threads as they fault pages or allocate).
const SETTLE: Duration = Duration::from_millis(5);

/// The pool's spare worker and its keeper thread.
#[derive(Default)]
pub(crate) struct Spare {
    state: Mutex<SpareState>,
    changed: Condvar,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct SpareState {
    /// The spare, greeted and initialised.
    ready: Option<Worker>,
    /// The pid of the spare being started, so that `terminate` can kill it.
    starting: Option<u32>,
    /// The keeper is starting a spare (from before its process exists until it is ready or
    /// has failed).
    in_progress: bool,
    /// The pool closed: no more spares.
    stopped: bool,
    /// Every driver has ended: the keeper may end (see the module's last point).
    exit: bool,
}

impl Spare {
    fn lock(&self) -> MutexGuard<'_, SpareState> {
        lock(&self.state)
    }

    /// Waits on `changed` while `waiting(&state)` holds, until `until` at the latest.
    fn wait_while<'a>(
        &self,
        mut state: MutexGuard<'a, SpareState>,
        until: Instant,
        waiting: impl Fn(&SpareState) -> bool,
    ) -> MutexGuard<'a, SpareState> {
        while waiting(&state) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state
    }

    /// Starts the keeper thread of `registry`'s spare.
    pub(crate) fn start_keeper(registry: &Arc<Registry>) -> std::io::Result<()> {
        let theirs = registry.clone();
        let handle = std::thread::Builder::new()
            .name("pool-spare".into())
            .spawn(move || keep(&theirs))?;
        *lock(&registry.spare.keeper) = Some(handle);
        Ok(())
    }

    /// The ready spare, if there is one and it is alive; the keeper then starts the next. A
    /// dead one is reaped and dropped. With `wait`, a spare the keeper is starting is waited
    /// for up to [`WAIT`] (it started before the caller could start its own).
    pub(crate) fn take(&self, wait: bool) -> Option<Worker> {
        let mut state = self.lock();
        if wait {
            state = self.wait_while(state, Instant::now() + WAIT, |s| {
                s.ready.is_none() && s.in_progress && !s.stopped
            });
        }
        let mut worker = state.ready.take()?;
        drop(state);
        self.changed.notify_all();
        match worker.try_reap() {
            Ok(None) => Some(worker),
            // Gone while it waited (killed, or lost with its fork server): it ran nothing.
            _ => {
                worker.kill();
                let _ = worker.reap();
                None
            }
        }
    }

    /// The pool closed: the keeper finishes the ready spare and starts no other.
    pub(crate) fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    /// The pool is terminated: kills the ready or starting spare now.
    pub(crate) fn kill(&self) {
        let state = self.lock();
        if let Some(w) = &state.ready {
            w.kill();
        }
        if let Some(pid) = state.starting {
            let _ = ipc_shm::os::kill(pid, ipc_shm::os::Signal::SIGKILL);
        }
    }

    /// Every driver has ended: lets the keeper end and joins it.
    pub(crate) fn join(&self) {
        {
            let mut state = self.lock();
            state.stopped = true;
            state.exit = true;
        }
        self.changed.notify_all();
        if let Some(handle) = lock(&self.keeper).take() {
            let _ = handle.join();
        }
    }
}

/// The keeper: keeps one spare ready while the pool is open.
fn keep(registry: &Registry) {
    let spare = &registry.spare;
    // The first spare starts at once, every later one (after a spare was taken, or a start
    // failed) once `SETTLE` has passed.
    let mut first = true;
    loop {
        {
            let mut state = spare.lock();
            while !state.stopped && state.ready.is_some() {
                state = spare.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.stopped {
                let ready = state.ready.take();
                drop(state);
                if let Some(worker) = ready {
                    crate::driver::finish_worker(worker);
                }
                break;
            }
            state.in_progress = true;
            if !first {
                // Drivers that lose a worker meanwhile wait for this spare (`in_progress`).
                state = spare.wait_while(state, Instant::now() + SETTLE, |s| !s.stopped);
                if state.stopped {
                    state.in_progress = false;
                    drop(state);
                    spare.changed.notify_all();
                    continue;
                }
            }
            first = false;
        }
        let started = start_one(registry);
        let mut state = spare.lock();
        state.starting = None;
        state.in_progress = false;
        match started {
            Some(worker) if !state.stopped => {
                state.ready = Some(worker);
                drop(state);
                spare.changed.notify_all();
            }
            Some(worker) => {
                drop(state);
                crate::driver::finish_worker(worker);
            }
            None => {
                // Wake drivers waiting for this spare: they start their own.
                spare.changed.notify_all();
                if !state.stopped {
                    let _ = spare.changed.wait_timeout(state, RETRY);
                }
            }
        }
    }
    // Workers this thread started may still serve drivers: PR_SET_PDEATHSIG would kill them
    // with this thread. Wait until every driver has ended.
    let mut state = spare.lock();
    while !state.exit {
        state = spare.changed.wait(state).unwrap_or_else(|p| p.into_inner());
    }
}

/// Starts, greets and initialises one worker; `None` if any of it fails (the worker, if any,
/// is killed and reaped).
fn start_one(registry: &Registry) -> Option<Worker> {
    let mut worker = start::start(registry.settings.start_method).ok()?;
    {
        let mut state = registry.spare.lock();
        state.starting = Some(worker.pid);
        if state.stopped {
            drop(state);
            worker.kill();
            let _ = worker.reap();
            return None;
        }
    }
    let (mut buf, mut frame) = (Vec::new(), Vec::new());
    let initializer = registry.settings.initializer.as_ref();
    match start::handshake(&mut worker, initializer, &mut buf, &mut frame) {
        Ok(()) => Some(worker),
        Err(_) => {
            worker.kill();
            let _ = worker.reap();
            None
        }
    }
}
