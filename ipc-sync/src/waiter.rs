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

    /// A modelled futex. Timed waits either time out at once (`timeouts_fire`), exploring the
    /// timeout paths, or behave as untimed waits, exploring the woken paths.
    #[derive(Debug)]
    pub struct LoomFutex {
        queue: Mutex<Queue>,
        cv: Condvar,
        timeouts_fire: bool,
    }

    #[derive(Debug, Default)]
    struct Queue {
        next_ticket: u64,
        sleeping: Vec<(usize, u64)>,
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
                timeouts_fire,
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
            if deadline.is_some() && self.timeouts_fire {
                return WaitOutcome::TimedOut;
            }
            let ticket = q.next_ticket;
            q.next_ticket += 1;
            q.sleeping.push((addr, ticket));
            loop {
                q = self.cv.wait(q).unwrap();
                if !q.sleeping.iter().any(|&(_, t)| t == ticket) {
                    return WaitOutcome::Woken;
                }
            }
        }

        fn wake(&self, word: &AtomicU32, n: u32) -> usize {
            let addr = word as *const AtomicU32 as usize;
            let mut q = self.queue.lock().unwrap();
            let mut woken = 0usize;
            q.sleeping.retain(|&(a, _)| {
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
