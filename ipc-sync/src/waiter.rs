//! How the algorithms sleep: a small trait, so the real futex, the loom model and test doubles
//! plug into the same logic.
//!
//! Every primitive of this crate is written as logic over atomics (from the `sync` shim) plus a
//! [`Waiter`]. Production code uses [`Futex`], which calls [`crate::futex`]; under `--cfg loom`
//! [`Futex`] becomes a model of a futex built from loom's `Mutex` and `Condvar`, so loom checks
//! for lost wake-ups (a waiter left asleep is reported as a deadlock) as well as for races.

use crate::futex::{Deadline, WaitOutcome};
use crate::sync::AtomicU32;

/// Sleeping on, and waking, a 32-bit word. The contract of a futex:
///
/// - [`Waiter::wait`] sleeps only if `word` holds `expected`, checked atomically with respect
///   to [`Waiter::wake`] on the same word; it may return early for any reason, and callers loop.
/// - [`Waiter::wake`] wakes up to `n` sleepers on `word` and returns how many it woke.
pub trait Waiter {
    /// Sleeps while `word == expected`, until woken or `deadline`.
    fn wait(&self, word: &AtomicU32, expected: u32, deadline: Option<Deadline>) -> WaitOutcome;
    /// Wakes up to `n` sleepers on `word`.
    fn wake(&self, word: &AtomicU32, n: u32) -> usize;
}

/// The production waiter: the shared futex of [`crate::futex`] (a loom model under `--cfg loom`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Futex;

#[cfg(not(loom))]
impl Waiter for Futex {
    #[inline]
    fn wait(&self, word: &AtomicU32, expected: u32, deadline: Option<Deadline>) -> WaitOutcome {
        crate::futex::wait(word, expected, deadline)
    }

    #[inline]
    fn wake(&self, word: &AtomicU32, n: u32) -> usize {
        crate::futex::wake(word, n)
    }
}

#[cfg(loom)]
pub use model::LoomFutex;

/// Under loom: whether timed waits of the modelled [`Futex`] time out at once (`true`, to
/// explore timeout and liveness-check paths) or behave as untimed waits (`false`, the default).
/// Call it at the start of each `loom::model` run.
#[cfg(loom)]
pub fn loom_timeouts_fire(fire: bool) {
    model::GLOBAL
        .timeouts_fire
        .store(fire, std::sync::atomic::Ordering::Relaxed);
}

/// Under loom: models time passing for the modelled [`Futex`] (see [`LoomFutex::time_passes`]),
/// for example after a modelled owner died, so sliced waits notice it without spinning.
#[cfg(loom)]
pub fn loom_time_passes() {
    model::GLOBAL.time_passes();
}

#[cfg(loom)]
impl Waiter for Futex {
    fn wait(&self, word: &AtomicU32, expected: u32, deadline: Option<Deadline>) -> WaitOutcome {
        model::GLOBAL.wait(word, expected, deadline)
    }

    fn wake(&self, word: &AtomicU32, n: u32) -> usize {
        model::GLOBAL.wake(word, n)
    }
}

#[cfg(loom)]
mod model {
    //! A futex model for loom: a wait queue under a loom `Mutex`, waiters parked on a `Condvar`.
    //!
    //! As in the kernel, the compare of the word and the enqueue happen under the queue's lock,
    //! and a wake dequeues under the same lock, so a wake that follows a change of the word
    //! cannot slip between a waiter's compare and its sleep.

    use super::{Deadline, WaitOutcome, Waiter};
    use crate::sync::{AtomicU32, Ordering};
    use loom::sync::{Condvar, Mutex};

    /// A modelled futex. A timed wait whose deadline has passed times out at once. Otherwise
    /// timed waits either time out at once (`timeouts_fire`), exploring the timeout paths, or
    /// sleep as untimed waits until [`LoomFutex::time_passes`] ends them (and then each thread's
    /// next timed wait times out once), which lets sliced waits notice a modelled death without
    /// spinning.
    #[derive(Debug)]
    pub struct LoomFutex {
        queue: Mutex<Queue>,
        cv: Condvar,
        /// A configuration switch, not modelled state (hence a std atomic).
        pub(super) timeouts_fire: std::sync::atomic::AtomicBool,
    }

    #[derive(Debug, Default)]
    struct Queue {
        next_ticket: u64,
        /// (word address, ticket, timed)
        sleeping: Vec<(usize, u64, bool)>,
        /// Tickets whose timed wait was ended by [`LoomFutex::time_passes`].
        timed_out: Vec<u64>,
        /// How many times time has passed, and how many of those each thread has seen.
        epoch: u64,
        seen: Vec<(loom::thread::ThreadId, u64)>,
    }

    loom::lazy_static! {
        pub(super) static ref GLOBAL: LoomFutex = LoomFutex::new(false);
    }

    impl LoomFutex {
        /// A model in which timed waits time out at once (`true`) or never (`false`).
        pub fn new(timeouts_fire: bool) -> LoomFutex {
            LoomFutex {
                queue: Mutex::new(Queue::default()),
                cv: Condvar::new(),
                timeouts_fire: std::sync::atomic::AtomicBool::new(timeouts_fire),
            }
        }
    }

    impl LoomFutex {
        /// Models time passing (long enough for every timed wait to expire): every timed
        /// sleeper wakes with `TimedOut`, and each thread's next timed wait times out once.
        pub fn time_passes(&self) {
            let mut q = self.queue.lock().unwrap();
            q.epoch += 1;
            let mut ended = Vec::new();
            q.sleeping.retain(|&(_, t, timed)| {
                if timed {
                    ended.push(t);
                }
                !timed
            });
            if !ended.is_empty() {
                q.timed_out.extend(ended);
                self.cv.notify_all();
            }
        }
    }

    impl Waiter for LoomFutex {
        fn wait(&self, word: &AtomicU32, expected: u32, deadline: Option<Deadline>) -> WaitOutcome {
            let addr = word as *const AtomicU32 as usize;
            let mut q = self.queue.lock().unwrap();
            if word.load(Ordering::SeqCst) != expected {
                return WaitOutcome::Mismatch;
            }
            if let Some(d) = deadline {
                if d.has_passed()
                    || self
                        .timeouts_fire
                        .load(std::sync::atomic::Ordering::Relaxed)
                {
                    return WaitOutcome::TimedOut;
                }
                // Time passed since this thread last timed out: this wait times out.
                let me = loom::thread::current().id();
                let epoch = q.epoch;
                match q.seen.iter_mut().find(|(t, _)| *t == me) {
                    Some((_, seen)) if *seen < epoch => {
                        *seen = epoch;
                        return WaitOutcome::TimedOut;
                    }
                    Some(_) => {}
                    None if epoch > 0 => {
                        q.seen.push((me, epoch));
                        return WaitOutcome::TimedOut;
                    }
                    None => {}
                }
            }
            let ticket = q.next_ticket;
            q.next_ticket += 1;
            q.sleeping.push((addr, ticket, deadline.is_some()));
            loop {
                q = self.cv.wait(q).unwrap();
                if !q.sleeping.iter().any(|&(_, t, _)| t == ticket) {
                    if let Some(i) = q.timed_out.iter().position(|&t| t == ticket) {
                        q.timed_out.swap_remove(i);
                        let me = loom::thread::current().id();
                        let epoch = q.epoch;
                        match q.seen.iter_mut().find(|(t, _)| *t == me) {
                            Some((_, seen)) => *seen = epoch,
                            None => q.seen.push((me, epoch)),
                        }
                        return WaitOutcome::TimedOut;
                    }
                    return WaitOutcome::Woken;
                }
            }
        }

        fn wake(&self, word: &AtomicU32, n: u32) -> usize {
            let addr = word as *const AtomicU32 as usize;
            let mut q = self.queue.lock().unwrap();
            let mut woken = 0usize;
            q.sleeping.retain(|&(a, _, _)| {
                if a == addr && woken < n as usize {
                    woken += 1;
                    false
                } else {
                    true
                }
            });
            if woken > 0 {
                self.cv.notify_all();
            }
            woken
        }
    }
}
