//! [`Condition`]: a condition variable for shared memory, used with a [`Lock`] or [`Mutex`](crate::Mutex)
//! guard.
//!
//! # Algorithm
//!
//! An [`EventCount`] (the workspace's one wake protocol, which has the state table and the
//! memory-ordering argument) plus a reserved word that keeps the layout at 8 bytes.
//!
//! - **wait**: `token = listen()` *while still holding the caller's lock*; unlock; wait on the
//!   token (never past the deadline); lock again and hand the guard back.
//! - **notify(n)**: notify the event count (a system call only if somebody is registered).
//!
//! Because the waiter registers *before* unlocking, a notify made by a thread that took the
//! lock after the waiter released it always finds the registration and bumps the sequence, so
//! the waiter either sees the change before sleeping or is woken by it: no lost wake-up.
//! `notify(n)` wakes at least `min(n, sleepers)` waiters; a waiter that registered but had not
//! yet fallen asleep also returns (a spurious wake-up, allowed for condition variables, as in
//! Python's and POSIX's), so use [`Condition::wait_for`] with a predicate.
//!
//! | event count | meaning |
//! |---|---|
//! | no registrations | nobody waits: notify costs one atomic read-modify-write (all-zero memory) |
//! | k registrations | up to k threads wait; notify wakes |
//!
//! ## Memory ordering
//!
//! That of [`EventCount`]; the protected data is ordered by the lock, not by the event count.
//!
//! # A participant's death
//!
//! A waiter that dies leaves its registration behind; the next notify clears it (one wasted
//! wake system call, not one per notify forever). A process that dies holding the lock is handled by the lock: the waiter that
//! re-acquires it gets `OwnerDied`. A notifier that dies before notifying cannot be detected
//! (the condition has no owner): use the timeout forms.

use std::time::Duration;

use crate::eventcount::{EventCount, EventWait};
use crate::futex::Deadline;
use crate::lock::{Acquired, Lock, LockError, LockGuard, Wait};
use crate::mutex::MutexGuard;
use crate::owner::{Env, Sys};
use crate::sync::AtomicU32;

/// A condition variable for shared memory (Python's `multiprocessing.Condition`, with the lock
/// kept separate: wait with a guard of any [`Lock`] or [`Mutex`](crate::Mutex)).
///
/// All-zero bytes are a valid condition with no waiters.
///
/// ```
/// use std::sync::Arc;
/// use ipc_sync::{Condition, Mutex};
///
/// let shared = Arc::new((Mutex::new(0u32), Condition::new()));
/// let s2 = shared.clone();
/// let t = std::thread::spawn(move || {
///     *s2.0.lock().unwrap() = 1;
///     s2.1.notify_all();
/// });
/// let guard = shared.0.lock().unwrap();
/// let guard = shared.1.wait_for(guard, |v| **v == 1).unwrap();
/// assert_eq!(*guard, 1);
/// # drop(guard);
/// t.join().unwrap();
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct Condition {
    ec: EventCount,
    /// Unused; keeps the 8-byte layout of the former two-word condition.
    _reserved: AtomicU32,
}

impl Default for Condition {
    fn default() -> Self {
        Condition::new()
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A lock guard a [`Condition`] can wait with: [`LockGuard`] or [`MutexGuard`].
pub trait CondGuard<'a>: Sized + sealed::Sealed {
    /// What the guard carries besides the lock guard.
    #[doc(hidden)]
    type Extra;
    /// Splits off the lock guard.
    #[doc(hidden)]
    fn split(self) -> (LockGuard<'a>, Self::Extra);
    /// Rebuilds the guard.
    #[doc(hidden)]
    fn join(guard: LockGuard<'a>, extra: Self::Extra) -> Self;
}

impl sealed::Sealed for LockGuard<'_> {}
impl<'a> CondGuard<'a> for LockGuard<'a> {
    type Extra = ();
    fn split(self) -> (LockGuard<'a>, ()) {
        (self, ())
    }
    fn join(guard: LockGuard<'a>, _: ()) -> Self {
        guard
    }
}

impl<T> sealed::Sealed for MutexGuard<'_, T> {}
impl<'a, T> CondGuard<'a> for MutexGuard<'a, T> {
    type Extra = &'a std::cell::UnsafeCell<T>;
    fn split(self) -> (LockGuard<'a>, Self::Extra) {
        self.into_parts()
    }
    fn join(guard: LockGuard<'a>, extra: Self::Extra) -> Self {
        MutexGuard::from_parts(guard, extra)
    }
}

impl Condition {
    /// A condition with no waiters (the same as all-zero bytes).
    pub fn new() -> Condition {
        Condition {
            ec: EventCount::new(),
            _reserved: AtomicU32::new(0),
        }
    }

    /// Releases the lock, waits for a notify, and locks again.
    ///
    /// May return without a notify (spuriously): check your condition, or use
    /// [`Condition::wait_for`]. Errors are those of re-locking (the lock's owner died).
    pub fn wait<'a, G: CondGuard<'a>>(&self, guard: G) -> Result<G, LockError<G>> {
        self.wait_impl(&Sys, guard, None).map(|(g, _)| g)
    }

    /// Like [`Condition::wait`], for at most `timeout`; also returns `false` if it timed out
    /// (Python's return value).
    pub fn wait_timeout<'a, G: CondGuard<'a>>(
        &self,
        guard: G,
        timeout: Duration,
    ) -> Result<(G, bool), LockError<G>> {
        self.wait_impl(&Sys, guard, Some(Deadline::after(timeout)))
    }

    /// Waits until `predicate` holds (checked under the lock, first before waiting).
    pub fn wait_for<'a, G: CondGuard<'a>>(
        &self,
        mut guard: G,
        mut predicate: impl FnMut(&mut G) -> bool,
    ) -> Result<G, LockError<G>> {
        while !predicate(&mut guard) {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    /// Waits until `predicate` holds or `timeout` passes; returns the predicate's last value
    /// (Python's `wait_for` with a timeout).
    pub fn wait_for_timeout<'a, G: CondGuard<'a>>(
        &self,
        mut guard: G,
        timeout: Duration,
        mut predicate: impl FnMut(&mut G) -> bool,
    ) -> Result<(G, bool), LockError<G>> {
        let deadline = Deadline::after(timeout);
        loop {
            if predicate(&mut guard) {
                return Ok((guard, true));
            }
            if deadline.has_passed() {
                return Ok((guard, false));
            }
            guard = self.wait_impl(&Sys, guard, Some(deadline))?.0;
        }
    }

    /// Wakes up to `n` waiters (more may return: see the module docs).
    #[inline]
    pub fn notify(&self, n: u32) {
        self.ec.notify(n);
    }

    /// Wakes every waiter.
    #[inline]
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }

    /// The generic wait (internal, env-generic for loom).
    pub(crate) fn wait_impl<'a, G: CondGuard<'a>>(
        &self,
        env: &impl Env,
        guard: G,
        deadline: Option<Deadline>,
    ) -> Result<(G, bool), LockError<G>> {
        let (lock_guard, extra) = guard.split();
        let (lock, _) = lock_guard.into_raw();
        let notified = self.raw_wait(lock, deadline);
        match lock.raw_lock(env, Wait::Until(None)) {
            Ok(Acquired::Clean) => Ok((G::join(LockGuard::from_raw(lock, false), extra), notified)),
            Ok(Acquired::OwnerDied) => Err(LockError::OwnerDied(G::join(
                LockGuard::from_raw(lock, true),
                extra,
            ))),
            Err(_) => Err(LockError::NotRecoverable),
        }
    }

    /// Registers, unlocks `lock`, sleeps until notified or `deadline`; returns whether a notify
    /// came. Does not re-lock.
    fn raw_wait(&self, lock: &Lock, deadline: Option<Deadline>) -> bool {
        let token = self.ec.listen();
        // An unrepaired (taken-over) lock stays inconsistent: waiting does not repair it, and
        // whoever locks it next, this waiter included, gets OwnerDied.
        lock.raw_unlock();
        self.ec.wait(token, deadline) == EventWait::Notified
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::Mutex;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn wait_timeout_times_out_and_keeps_the_lock() {
        let lock = Lock::new();
        let c = Condition::new();
        let g = lock.lock().unwrap();
        let start = Instant::now();
        let (g, notified) = c.wait_timeout(g, Duration::from_millis(30)).unwrap();
        assert!(!notified);
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(lock.is_locked());
        drop(g);
        assert!(!lock.is_locked());
    }

    #[test]
    fn producer_consumer_with_a_mutex() {
        let shared = Arc::new((Mutex::new(0u64), Condition::new()));
        let s2 = shared.clone();
        let consumer = std::thread::spawn(move || {
            let mut got = 0;
            while got < 1000 {
                let mut g = s2.1.wait_for(s2.0.lock().unwrap(), |v| **v > 0).unwrap();
                got += *g;
                *g = 0;
                drop(g);
                s2.1.notify_all();
            }
            got
        });
        for _ in 0..1000 {
            let mut g = shared.0.lock().unwrap();
            g = shared.1.wait_for(g, |v| **v == 0).unwrap();
            *g += 1;
            drop(g);
            shared.1.notify_all();
        }
        assert_eq!(consumer.join().unwrap(), 1000);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::owner::model::TestEnv;
    use crate::sync::Ordering;
    use loom::sync::Arc;

    /// The waiter checks a flag under the lock and waits; the notifier sets it under the lock
    /// and notifies. A lost wake-up would leave the waiter asleep: loom reports a deadlock.
    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let lock = Arc::new(Lock::new());
            let cond = Arc::new(Condition::new());
            let flag = Arc::new(AtomicU32::new(0));
            let dead = Arc::new(AtomicU32::new(0));
            let (l2, c2, f2, env2) = (
                lock.clone(),
                cond.clone(),
                flag.clone(),
                TestEnv::new(2, &dead),
            );
            let notifier = loom::thread::spawn(move || {
                l2.raw_lock(&env2, Wait::Until(None)).unwrap();
                f2.store(1, Ordering::Relaxed);
                l2.raw_unlock();
                c2.notify(1);
            });
            let env1 = TestEnv::new(1, &dead);
            lock.raw_lock(&env1, Wait::Until(None)).unwrap();
            let mut g = LockGuard::from_raw(&lock, false);
            while flag.load(Ordering::Relaxed) == 0 {
                g = cond.wait_impl(&env1, g, None).unwrap().0;
            }
            drop(g);
            notifier.join().unwrap();
        });
    }
}
