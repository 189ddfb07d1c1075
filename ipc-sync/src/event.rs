//! [`Event`]: a flag that threads and processes can wait for.
//!
//! # Algorithm
//!
//! One 32-bit word (the futex): bit 0 `SET`, bit 1 `WAITERS` (somebody may sleep), bits 2-31
//! a generation counted up by every `set` that finds the event clear.
//!
//! - **set**: if clear, CAS to `(generation + 1) | SET` (dropping `WAITERS`); if the old word
//!   had `WAITERS`, wake everybody. Already set: nothing (no system call).
//! - **clear**: clear bit 0.
//! - **wait**: return if `SET`. Otherwise poll briefly (the shared [`Backoff`] policy: a `set`
//!   often follows within a microsecond), then set `WAITERS` and sleep while the word is unchanged. Return
//!   when `SET` is seen *or the generation moved*: a `set` followed at once by a `clear` still
//!   ends every wait that began before the `set` (Python's `Event.wait` returns `True` then
//!   too).
//!
//! | word | meaning |
//! |---|---|
//! | `g << 2` | clear, nobody sleeps (all-zero memory: clear, generation 0) |
//! | `g << 2 \| WAITERS` | clear, somebody may sleep: the next set wakes all |
//! | `(g+1) << 2 \| SET` | set |
//!
//! ## Memory ordering
//!
//! `set`'s CAS is `Release` and waiters read the word with `Acquire`, so what the setter wrote
//! before `set` is visible to a waiter that returns. Lost wake-ups are excluded by the futex:
//! a waiter sleeps only while the word holds exactly the `WAITERS` value it saw, and `set`
//! changes the word before it wakes.
//!
//! # A participant's death
//!
//! An event has no owner. A waiter that dies leaves at most a stale `WAITERS` bit (one extra
//! wake system call on the next `set`, which clears the bit: the cost is bounded, as with
//! [`EventCount`](crate::EventCount); an event is one word, a flag plus its own waiters bit,
//! so it keeps this cheaper form of the same protocol). A process that dies before calling `set` cannot be
//! told from a slow one: waiters wait until their timeout.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::futex::{Deadline, WaitOutcome};
use crate::sync::{AtomicU32, Ordering};
use crate::waiter::{Futex, Waiter};

const SET: u32 = 1;
const WAITERS: u32 = 2;
const GEN_ONE: u32 = 4;

/// The spin policy of every event in this process (a process-local heuristic). The old fixed
/// 40 polls were measured on the 2-vCPU reference VM: they turned a blocking ping-pong into a
/// ~1 us one, while 200 polls made it *slower* (16 us) than not spinning; the adaptive budget
/// keeps the first and shrinks away from the second (see [`crate::backoff`]).
static BACKOFF: Backoff = Backoff::new();

/// A flag that threads and processes can wait for (Python's `multiprocessing.Event`).
///
/// All-zero bytes are a clear event.
///
/// ```
/// use std::sync::Arc;
/// use ipc_sync::Event;
///
/// let ready = Arc::new(Event::new());
/// let r2 = ready.clone();
/// let t = std::thread::spawn(move || r2.wait());
/// ready.set();
/// t.join().unwrap();
/// assert!(ready.is_set());
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct Event {
    word: AtomicU32,
}

impl Default for Event {
    fn default() -> Self {
        Event::new()
    }
}

impl Event {
    /// A clear event (the same as all-zero bytes).
    pub fn new() -> Event {
        Event {
            word: AtomicU32::new(0),
        }
    }

    /// Whether the event is set.
    #[inline]
    pub fn is_set(&self) -> bool {
        self.word.load(Ordering::Acquire) & SET != 0
    }

    /// Sets the event, waking every waiter (with a system call only if someone sleeps).
    #[inline]
    pub fn set(&self) {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            if w & SET != 0 {
                return;
            }
            let new = (w & !(SET | WAITERS)).wrapping_add(GEN_ONE) | SET;
            match self
                .word
                .compare_exchange_weak(w, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        if w & WAITERS != 0 {
            Futex.wake(&self.word, u32::MAX);
        }
    }

    /// Clears the event.
    #[inline]
    pub fn clear(&self) {
        self.word.fetch_and(!SET, Ordering::Relaxed);
    }

    /// Waits until the event is set.
    #[inline]
    pub fn wait(&self) {
        self.wait_deadline(None);
    }

    /// Waits until the event is set or `timeout` passes; returns whether it was set (never
    /// `false` before the timeout).
    #[inline]
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_deadline(Some(Deadline::after(timeout)))
    }

    /// Waits until the event is set or `deadline` (if any) passes; returns whether it was set.
    #[inline]
    pub fn wait_deadline(&self, deadline: Option<Deadline>) -> bool {
        let w = self.word.load(Ordering::Acquire);
        if w & SET != 0 {
            return true;
        }
        self.wait_slow(w, deadline)
    }

    #[cold]
    fn wait_slow(&self, first: u32, deadline: Option<Deadline>) -> bool {
        let generation = first & !(SET | WAITERS);
        let fired = |w: u32| w & SET != 0 || w & !(SET | WAITERS) != generation;
        let mut w = first;
        let started = std::time::Instant::now();
        // No spin for a deadline that has already passed (a zero timeout is a check).
        let can_spin = deadline.is_none_or(|d| !d.has_passed());
        if can_spin
            && BACKOFF.spin(|| {
                w = self.word.load(Ordering::Acquire);
                fired(w)
            })
        {
            return true;
        }
        let set = self.sleep(w, deadline, fired);
        if can_spin {
            BACKOFF.slept(started);
        }
        set
    }

    /// The sleeping half of [`Event::wait_slow`], from the word `w` last read.
    fn sleep(&self, mut w: u32, deadline: Option<Deadline>, fired: impl Fn(u32) -> bool) -> bool {
        loop {
            if fired(w) {
                return true;
            }
            if w & WAITERS == 0 {
                if let Err(now) = self.word.compare_exchange_weak(
                    w,
                    w | WAITERS,
                    Ordering::Acquire,
                    Ordering::Acquire,
                ) {
                    w = now;
                    continue;
                }
                w |= WAITERS;
            }
            if deadline.is_some_and(|d| d.has_passed()) {
                return fired(self.word.load(Ordering::Acquire));
            }
            if Futex.wait(&self.word, w, deadline) == WaitOutcome::TimedOut
                && deadline.is_some_and(|d| d.has_passed())
            {
                return fired(self.word.load(Ordering::Acquire));
            }
            w = self.word.load(Ordering::Acquire);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn set_clear_and_timeouts() {
        let e = Event::new();
        assert!(!e.is_set());
        let start = Instant::now();
        assert!(!e.wait_timeout(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
        e.set();
        e.set();
        assert!(e.is_set());
        assert!(e.wait_timeout(Duration::ZERO));
        e.clear();
        assert!(!e.is_set());
    }

    #[test]
    fn wakes_many_waiters() {
        let e = Arc::new(Event::new());
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let e = e.clone();
                std::thread::spawn(move || e.wait_timeout(Duration::from_secs(20)))
            })
            .collect();
        e.set();
        for h in hs {
            assert!(h.join().unwrap());
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let e = Arc::new(Event::new());
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let e = e.clone();
                    loom::thread::spawn(move || e.wait())
                })
                .collect();
            e.set();
            for h in hs {
                h.join().unwrap();
            }
        });
    }

    /// A waiter that has started waiting returns even if the set is undone at once.
    #[test]
    fn set_then_clear_still_ends_a_started_wait() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let e = Arc::new(Event::new());
            let started = Arc::new(AtomicU32::new(0));
            let (e2, s2) = (e.clone(), started.clone());
            let t = loom::thread::spawn(move || {
                let first = e2.word.load(Ordering::Acquire);
                s2.store(1, Ordering::Release);
                // The wait proper, from the word read above.
                if first & SET == 0 {
                    e2.wait_slow(first, None);
                }
            });
            while started.load(Ordering::Acquire) == 0 {
                loom::thread::yield_now();
            }
            e.set();
            e.clear();
            t.join().unwrap();
        });
    }
}
