//! [`RLock`]: a re-entrant [`Lock`]: the owning thread may lock it again.
//!
//! # Algorithm
//!
//! An inner [`Lock`] plus a recursion `count` that only the owner touches. To lock, a thread
//! first asks whether it already owns the inner lock: the word holds its thread id *and* the
//! owner record holds its start time (a dead thread whose id was reused by the caller is not
//! the caller). If so it increments `count`; otherwise it locks the inner lock and sets
//! `count = 1`. Dropping a guard decrements `count` and unlocks the inner lock at zero.
//!
//! | word owner | count | meaning |
//! |---|---|---|
//! | 0 | any | unlocked (all-zero memory is this state; a stale count is overwritten) |
//! | me | n >= 1 | held by me, n guards alive |
//! | other | n | held by another thread; I take the inner lock's slow path |
//!
//! ## Memory ordering
//!
//! `count` is read and written only by the owner, under the inner lock, so `Relaxed` suffices;
//! the inner lock's acquire/release orders it between owners. The ownership check reads the
//! word and the record `Relaxed`: a thread can only ever see its *own* id there if it wrote it
//! itself (program order), so a stale read can only make it take the slow path.
//!
//! # Owner death
//!
//! As for [`Lock`]: the next acquirer gets `OwnerDied` with a guard (count reset to 1), repairs,
//! and calls [`RLockGuard::mark_consistent`]; if the lock's last guard is dropped while it is
//! still inconsistent, the lock becomes not recoverable.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crate::futex::Deadline;
use crate::lock::{Acquired, Lock, LockError, LockTimeoutError, RawError, TryLockError, Wait};
use crate::owner::{Env, Sys};
use crate::sync::{AtomicU32, Ordering};

/// A re-entrant lock for shared memory (Python's `multiprocessing.RLock`), robust to the
/// owner's death like [`Lock`].
///
/// Re-entrancy is per *thread*: another thread of the same process blocks like another
/// process. All-zero bytes are an unlocked RLock.
///
/// ```
/// use ipc_sync::RLock;
///
/// let r = RLock::new();
/// let outer = r.lock().unwrap();
/// let inner = r.lock().unwrap(); // same thread: no deadlock
/// assert_eq!(r.depth(), 2);
/// drop(inner);
/// drop(outer);
/// assert!(!r.is_locked());
/// ```
#[repr(C)]
pub struct RLock {
    lock: Lock,
    count: AtomicU32,
    _pad: u32,
}

impl Default for RLock {
    fn default() -> Self {
        RLock::new()
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("lock", &self.lock)
            .field("count", &self.count.load(Ordering::Relaxed))
            .finish()
    }
}

/// Holds one level of an [`RLock`]; releases that level when dropped.
#[must_use = "the level is released when the guard is dropped"]
pub struct RLockGuard<'a> {
    rlock: &'a RLock,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard").finish_non_exhaustive()
    }
}

impl RLock {
    /// An unlocked RLock (the same as all-zero bytes).
    pub fn new() -> RLock {
        RLock {
            lock: Lock::new(),
            count: AtomicU32::new(0),
            _pad: 0,
        }
    }

    fn guard(&self) -> RLockGuard<'_> {
        RLockGuard {
            rlock: self,
            _not_send: PhantomData,
        }
    }

    /// Acquires one level (internal, env-generic for loom).
    pub(crate) fn raw_acquire(&self, env: &impl Env, wait: Wait) -> Result<Acquired, RawError> {
        let me = env.me();
        if self.lock.is_held_by(me) {
            let c = self.count.load(Ordering::Relaxed);
            self.count.store(c.saturating_add(1), Ordering::Relaxed);
            return Ok(Acquired::Clean);
        }
        let r = self.lock.raw_lock(env, wait)?;
        self.count.store(1, Ordering::Relaxed);
        Ok(r)
    }

    /// Releases one level (internal).
    pub(crate) fn raw_release(&self) {
        let c = self.count.load(Ordering::Relaxed);
        if c > 1 {
            self.count.store(c - 1, Ordering::Relaxed);
            return;
        }
        self.count.store(0, Ordering::Relaxed);
        if self.lock.raw_is_inconsistent() {
            self.lock.raw_unlock_unrecoverable();
        } else {
            self.lock.raw_unlock();
        }
    }

    /// Acquires one level, sleeping while another thread or process holds the lock.
    pub fn lock(&self) -> Result<RLockGuard<'_>, LockError<RLockGuard<'_>>> {
        match self.raw_acquire(&Sys, Wait::Until(None)) {
            Ok(Acquired::Clean) => Ok(self.guard()),
            Ok(Acquired::OwnerDied) => Err(LockError::OwnerDied(self.guard())),
            Err(_) => Err(LockError::NotRecoverable),
        }
    }

    /// Acquires one level if this thread owns the lock or it is free right now (checking a
    /// holder's liveness like [`Lock::try_lock`]).
    pub fn try_lock(&self) -> Result<RLockGuard<'_>, TryLockError<RLockGuard<'_>>> {
        match self.raw_acquire(&Sys, Wait::No) {
            Ok(Acquired::Clean) => Ok(self.guard()),
            Ok(Acquired::OwnerDied) => Err(TryLockError::OwnerDied(self.guard())),
            Err(RawError::NotRecoverable) => Err(TryLockError::NotRecoverable),
            Err(_) => Err(TryLockError::WouldBlock),
        }
    }

    /// Acquires one level, waiting at most `timeout`.
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RLockGuard<'_>, LockTimeoutError<RLockGuard<'_>>> {
        self.lock_deadline(Deadline::after(timeout))
    }

    /// Acquires one level, waiting at most until `deadline`.
    pub fn lock_deadline(
        &self,
        deadline: Deadline,
    ) -> Result<RLockGuard<'_>, LockTimeoutError<RLockGuard<'_>>> {
        match self.raw_acquire(&Sys, Wait::Until(Some(deadline))) {
            Ok(Acquired::Clean) => Ok(self.guard()),
            Ok(Acquired::OwnerDied) => Err(LockTimeoutError::OwnerDied(self.guard())),
            Err(RawError::NotRecoverable) => Err(LockTimeoutError::NotRecoverable),
            Err(_) => Err(LockTimeoutError::Timeout),
        }
    }

    /// Whether some thread holds the lock (a snapshot).
    pub fn is_locked(&self) -> bool {
        self.lock.is_locked()
    }

    /// Whether the calling thread holds the lock.
    pub fn is_owned(&self) -> bool {
        self.lock.is_held_by(Sys.me())
    }

    /// How many levels the calling thread holds (0 if it does not own the lock).
    pub fn depth(&self) -> u32 {
        if self.is_owned() {
            self.count.load(Ordering::Relaxed)
        } else {
            0
        }
    }
}

impl RLockGuard<'_> {
    /// Declares the protected state repaired after `OwnerDied` (see
    /// [`LockGuard::mark_consistent`](crate::LockGuard::mark_consistent)).
    pub fn mark_consistent(&mut self) {
        self.rlock.lock.raw_mark_consistent();
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        self.rlock.raw_release();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn other_threads_block_until_the_last_level_is_released() {
        let r = Arc::new(RLock::new());
        let g1 = r.lock().unwrap();
        let g2 = r.lock().unwrap();
        let r2 = r.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let r = r2.try_lock();
            assert!(matches!(r, Err(TryLockError::WouldBlock)), "{r:?}");
            drop(r);
            assert_eq!(r2.depth(), 0);
            tx.send(()).unwrap();
            drop(r2.lock().unwrap());
        });
        rx.recv().unwrap();
        drop(g2);
        assert!(r.is_owned());
        drop(g1);
        t.join().unwrap();
        assert!(!r.is_locked());
    }

    #[test]
    fn owner_death_resets_the_depth() {
        let r = Arc::new(RLock::new());
        let r2 = r.clone();
        std::thread::spawn(move || {
            std::mem::forget(r2.lock().unwrap());
            std::mem::forget(r2.lock().unwrap());
        })
        .join()
        .unwrap();
        let mut g = r.lock().unwrap_err().into_guard().unwrap();
        assert_eq!(r.depth(), 1);
        g.mark_consistent();
        drop(g);
        assert!(!r.is_locked());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::owner::model::TestEnv;
    use loom::sync::Arc;

    #[test]
    fn reentry_and_exclusion() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let r = Arc::new(RLock::new());
            let data = Arc::new(AtomicU32::new(0));
            let dead = Arc::new(AtomicU32::new(0));
            let hs: Vec<_> = (1..=2)
                .map(|tid| {
                    let (r, data, env) = (r.clone(), data.clone(), TestEnv::new(tid, &dead));
                    loom::thread::spawn(move || {
                        r.raw_acquire(&env, Wait::Until(None)).unwrap();
                        r.raw_acquire(&env, Wait::Until(None)).unwrap();
                        let v = data.load(Ordering::Relaxed);
                        data.store(v + 1, Ordering::Relaxed);
                        r.raw_release();
                        let v = data.load(Ordering::Relaxed);
                        data.store(v + 1, Ordering::Relaxed);
                        r.raw_release();
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!(data.load(Ordering::Relaxed), 4);
            assert!(!r.is_locked());
        });
    }
}
