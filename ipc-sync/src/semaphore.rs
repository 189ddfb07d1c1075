//! [`Semaphore`] and [`BoundedSemaphore`]: counters of permits for shared memory.
//!
//! # Algorithm
//!
//! Two words: `count` (the permits) and an [`EventCount`] (the workspace's one wake protocol,
//! which has its own state table and memory-ordering argument) that acquirers sleep on.
//!
//! - **acquire**: CAS `count -> count - 1` while `count > 0` (no system call). Otherwise spin
//!   briefly (the shared [`Backoff`] policy), then loop: take a permit if one is there, else
//!   `listen()`, re-check, and wait on the event count.
//! - **release(n)**: `count += n`; notify `n` (a system call only if somebody is registered).
//!
//! | count | event count | meaning |
//! |---|---|---|
//! | 0 | no registrations | no permit, nobody waits (all-zero memory: a semaphore of value 0) |
//! | c > 0 | any | c permits |
//! | 0 | k registrations | up to k threads wait (or are about to): release wakes |
//!
//! ## Memory ordering
//!
//! The acquirer's "register, then read `count`" against the releaser's "raise `count`, then
//! read the registrations" is the event count's store-buffering pair, closed by its
//! read-modify-writes. A successful acquire CAS is `Acquire` and the release CAS is `Release`
//! (`SeqCst`), so what a releaser wrote before `release` is visible after `acquire`.
//!
//! # A participant's death
//!
//! Permits have no owner (any process may release, as in Python and POSIX), so a process that
//! dies holding permits takes them with it: the semaphore cannot know. Waiters then wait until
//! their timeout; prefer the timeout forms when peers may die. A waiter that dies leaves a
//! registration behind, which the next release clears (one wasted wake system call).

use std::time::Duration;

use crate::backoff::Backoff;
use crate::eventcount::{EventCount, EventWait};
use crate::futex::Deadline;
use crate::sync::{AtomicU32, Ordering};

/// The spin policy of every semaphore in this process (a process-local heuristic).
static BACKOFF: Backoff = Backoff::new();

/// Why a release failed: the count would pass its maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// Releasing `n` permits would raise the value above `max` (for a [`BoundedSemaphore`],
    /// its initial value; otherwise `u32::MAX`). Nothing was released.
    #[error("releasing {n} permit(s) would raise the semaphore above its maximum of {max}")]
    TooMany {
        /// The permits asked to release.
        n: u32,
        /// The maximum value.
        max: u32,
    },
}

/// A counting semaphore for shared memory (Python's `multiprocessing.Semaphore`).
///
/// All-zero bytes are a semaphore of value 0; give it permits with [`Semaphore::release`] (for
/// example while initialising the segment) or build it with [`Semaphore::new`].
///
/// ```
/// use ipc_sync::Semaphore;
///
/// let s = Semaphore::new(2);
/// assert!(s.try_acquire());
/// assert!(s.try_acquire());
/// assert!(!s.try_acquire());
/// s.release(1).unwrap();
/// assert_eq!(s.value(), 1);
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct Semaphore {
    count: AtomicU32,
    ec: EventCount,
}

impl Default for Semaphore {
    fn default() -> Self {
        Semaphore::new(0)
    }
}

impl Semaphore {
    /// A semaphore holding `value` permits.
    pub fn new(value: u32) -> Semaphore {
        Semaphore {
            count: AtomicU32::new(value),
            ec: EventCount::new(),
        }
    }

    /// Takes a permit if one is available right now.
    #[inline]
    pub fn try_acquire(&self) -> bool {
        let mut c = self.count.load(Ordering::Relaxed);
        while c > 0 {
            match self
                .count
                .compare_exchange_weak(c, c - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
        false
    }

    /// Takes a permit, sleeping until one is released.
    #[inline]
    pub fn acquire(&self) {
        if !self.try_acquire() {
            self.acquire_slow(None);
        }
    }

    /// Takes a permit, waiting at most `timeout`; returns whether it got one.
    #[inline]
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.try_acquire() || self.acquire_slow(Some(Deadline::after(timeout)))
    }

    /// Takes a permit, waiting at most until `deadline`; returns whether it got one.
    #[inline]
    pub fn acquire_deadline(&self, deadline: Deadline) -> bool {
        self.try_acquire() || self.acquire_slow(Some(deadline))
    }

    #[cold]
    fn acquire_slow(&self, deadline: Option<Deadline>) -> bool {
        let started = std::time::Instant::now();
        // No spin for a deadline that has already passed (a zero timeout is a try).
        let can_spin = deadline.is_none_or(|d| !d.has_passed());
        if can_spin && BACKOFF.spin(|| self.try_acquire()) {
            return true;
        }
        let got = loop {
            if self.try_acquire() {
                break true;
            }
            let token = self.ec.listen();
            if self.try_acquire() {
                self.ec.cancel(token);
                break true;
            }
            if self.ec.wait(token, deadline) == EventWait::TimedOut {
                break self.try_acquire();
            }
        };
        if can_spin {
            BACKOFF.slept(started);
        }
        got
    }

    /// Adds `n` permits, waking up to `n` waiters.
    #[inline]
    pub fn release(&self, n: u32) -> Result<(), ReleaseError> {
        self.release_bounded(n, u32::MAX)
    }

    fn release_bounded(&self, n: u32, max: u32) -> Result<(), ReleaseError> {
        let mut c = self.count.load(Ordering::Relaxed);
        loop {
            let new = match c.checked_add(n) {
                Some(v) if v <= max => v,
                _ => return Err(ReleaseError::TooMany { n, max }),
            };
            match self
                .count
                .compare_exchange_weak(c, new, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        self.ec.notify(n);
        Ok(())
    }

    /// The current number of permits (a snapshot).
    pub fn value(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }
}

/// A semaphore that refuses to be released above its initial value (Python's
/// `multiprocessing.BoundedSemaphore`): such a release is a bug, reported as
/// [`ReleaseError::TooMany`].
///
/// Its bound must be set: build it with [`BoundedSemaphore::new`], or, in a zero-filled
/// segment, call [`BoundedSemaphore::configure`] once before other processes use it (all-zero
/// bytes are a bounded semaphore of value and maximum 0).
///
/// ```
/// use ipc_sync::{BoundedSemaphore, ReleaseError};
///
/// let s = BoundedSemaphore::new(1);
/// s.acquire();
/// s.release(1).unwrap();
/// assert!(matches!(s.release(1), Err(ReleaseError::TooMany { .. })));
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct BoundedSemaphore {
    sem: Semaphore,
    max: AtomicU32,
}

impl BoundedSemaphore {
    /// A bounded semaphore holding (and bounded by) `value` permits.
    pub fn new(value: u32) -> BoundedSemaphore {
        BoundedSemaphore {
            sem: Semaphore::new(value),
            max: AtomicU32::new(value),
        }
    }

    /// Sets value and bound to `value`. Only for initialisation, before other threads or
    /// processes use the semaphore (for example in `SegmentBuilder::create_with`).
    pub fn configure(&self, value: u32) {
        self.max.store(value, Ordering::Relaxed);
        self.sem.count.store(value, Ordering::Release);
    }

    /// See [`Semaphore::try_acquire`].
    #[inline]
    pub fn try_acquire(&self) -> bool {
        self.sem.try_acquire()
    }

    /// See [`Semaphore::acquire`].
    #[inline]
    pub fn acquire(&self) {
        self.sem.acquire()
    }

    /// See [`Semaphore::acquire_timeout`].
    #[inline]
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.sem.acquire_timeout(timeout)
    }

    /// See [`Semaphore::acquire_deadline`].
    #[inline]
    pub fn acquire_deadline(&self, deadline: Deadline) -> bool {
        self.sem.acquire_deadline(deadline)
    }

    /// Adds `n` permits; fails, releasing nothing, if that would exceed the initial value.
    #[inline]
    pub fn release(&self, n: u32) -> Result<(), ReleaseError> {
        self.sem
            .release_bounded(n, self.max.load(Ordering::Relaxed))
    }

    /// The current number of permits (a snapshot).
    pub fn value(&self) -> u32 {
        self.sem.value()
    }

    /// The bound (the initial value).
    pub fn max(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn timeout_and_wakeup() {
        let s = Arc::new(Semaphore::new(0));
        let start = Instant::now();
        assert!(!s.acquire_timeout(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.acquire_timeout(Duration::from_secs(20)));
        s.release(1).unwrap();
        assert!(t.join().unwrap());
        assert_eq!(s.value(), 0);
    }

    #[test]
    fn overflow_is_an_error() {
        let s = Semaphore::new(u32::MAX);
        assert_eq!(
            s.release(1),
            Err(ReleaseError::TooMany {
                n: 1,
                max: u32::MAX
            })
        );
        let b = BoundedSemaphore::new(0);
        b.configure(2);
        b.acquire();
        assert!(b.release(2).is_err());
        assert!(b.release(1).is_ok());
        assert_eq!(b.value(), 2);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// Two waiters, two single releases: both waiters must get a permit (a lost wake-up
    /// would be a deadlock), and never more permits than released.
    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let s = Arc::new(Semaphore::new(0));
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let s = s.clone();
                    loom::thread::spawn(move || s.acquire())
                })
                .collect();
            s.release(1).unwrap();
            s.release(1).unwrap();
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!(s.value(), 0);
        });
    }
}
