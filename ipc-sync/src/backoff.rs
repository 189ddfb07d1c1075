//! [`Backoff`]: the workspace's one adaptive spin-then-sleep policy.
//!
//! A waiter that finds nothing to do first polls its condition for a while ("spins"), and only
//! then sleeps in the kernel (through an [`EventCount`](crate::EventCount) or a futex). A
//! [`Backoff`] decides how long to spin. It is a process-local heuristic (not shared memory):
//! one per handle, or a `static` per primitive, used through `&self` from any thread.
//!
//! # Policy
//!
//! The budget is **time**, not a number of polls, so it means the same on every machine. The
//! clock (`Instant::now`, `CLOCK_MONOTONIC` through the vDSO: 18 ns on the reference VM) is
//! read only every [`CLOCK_EVERY`] polls (a poll, an atomic load and a `PAUSE`, is 9 ns there),
//! so the clock adds about 12% to a bare poll loop, and a peer that answers within the first
//! 16 polls (~150 ns) costs no clock read at all. The budget adapts, within `[MIN, max]`:
//!
//! | event | budget becomes | why |
//! |---|---|---|
//! | the condition came true within the first [`CLOCK_EVERY`] polls | unchanged | the budget is not what made it work |
//! | the condition came true later in the spin | doubled | the peer answers in about this time: keep catching it |
//! | the spin failed, and the sleep that followed was short (< [`SHORT_SLEEP`]) | doubled | the peer was busy, not idle: a slightly longer spin would have caught it |
//! | the spin failed, and the sleep was long | halved | the peer is idle: stop burning the core |
//!
//! It never falls below `MIN` (1 us, or `max` if that is lower): halving after every sleep
//! alone would be a trap, since below the peer's usual turnaround no spin would ever succeed
//! again and the budget could never grow back. A maximum of zero never spins.
//!
//! # Measurements that chose it
//!
//! On the 2-vCPU reference VM:
//!
//! - a spinning round trip between two processes costs 45-70 ns;
//! - a futex sleep/wake round trip costs 5-8 us when both sides share a core and 8-65 us across
//!   cores (the idle vCPU is halted and must be woken);
//! - `FUTEX_WAKE` with nobody waiting costs 72 ns.
//!
//! Spinning longer than a sleep/wake round trip can never win (the classic competitive
//! argument: spin for as long as a block costs), so the default maximum is [`DEFAULT_MAX`]
//! (50 us, the upper part of the cross-core sleep cost); the initial budget is 4 us, a few times
//! the same-core sleep cost and ~60 spinning round trips. The old poll-counting spins (4096
//! polls in the queue and the pipe, 40 in `Event`) meant anything from ~5 to ~150 us depending
//! on the CPU's `PAUSE` latency; a 64 KiB pipe round trip (peer busy a few microseconds per
//! message) was 51 us hot against 11 us asleep, because the spin gave up just before the peer
//! answered and never grew. Growing after a short sleep fixes that.
//!
//! Under `--cfg loom` a backoff never spins (the models stay small; the sleeping path is the one
//! worth checking).

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::sync::spin_hint;

/// Polls between two reads of the clock.
pub const CLOCK_EVERY: u32 = 16;
/// The default (and largest useful) spin budget on the reference machine.
pub const DEFAULT_MAX: Duration = Duration::from_micros(50);
/// A sleep shorter than this means the peer was busy, not idle.
pub const SHORT_SLEEP: Duration = Duration::from_micros(100);
/// The approximate cost of one poll (a load and a `PAUSE`: 9 ns measured on the reference VM),
/// used only to convert the old poll-counting knobs ([`Backoff::from_polls`]).
pub const NANOS_PER_POLL: u32 = 10;

const MIN_NS: u32 = 1_000;
const INITIAL_NS: u32 = 4_000;
const DEFAULT_MAX_NS: u32 = 50_000;

/// An adaptive spin budget (see the module docs for the policy).
///
/// ```
/// use std::time::{Duration, Instant};
/// use ipc_sync::Backoff;
///
/// let backoff = Backoff::new();
/// let flag = std::sync::atomic::AtomicBool::new(true);
/// let started = Instant::now();
/// if !backoff.spin(|| flag.load(std::sync::atomic::Ordering::Acquire)) {
///     // ... sleep on an event count or futex, then:
///     backoff.slept(started);
/// }
/// assert!(Backoff::never().budget().is_zero());
/// ```
#[derive(Debug)]
pub struct Backoff {
    /// The current budget in nanoseconds, within `[min(MIN, max), max]`.
    budget_ns: AtomicU32,
    /// The largest budget in nanoseconds; 0 never spins.
    max_ns: u32,
}

impl Clone for Backoff {
    /// A backoff with the same maximum, starting from this one's current budget.
    fn clone(&self) -> Backoff {
        Backoff {
            budget_ns: AtomicU32::new(self.budget_ns.load(Relaxed)),
            max_ns: self.max_ns,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    /// The default policy: start at 4 us, adapt within 1-50 us.
    pub const fn new() -> Backoff {
        Backoff {
            budget_ns: AtomicU32::new(INITIAL_NS),
            max_ns: DEFAULT_MAX_NS,
        }
    }

    /// A backoff that spins at most `max` (saturating at ~4 s); `Duration::ZERO` never spins.
    pub const fn with_max(max: Duration) -> Backoff {
        let nanos = max.as_nanos();
        let max_ns = if nanos > u32::MAX as u128 {
            u32::MAX
        } else {
            nanos as u32
        };
        let initial = if INITIAL_NS < max_ns {
            INITIAL_NS
        } else {
            max_ns
        };
        Backoff {
            budget_ns: AtomicU32::new(initial),
            max_ns,
        }
    }

    /// A backoff that never spins: every wait sleeps at once.
    pub const fn never() -> Backoff {
        Backoff::with_max(Duration::ZERO)
    }

    /// Converts a poll-counting limit (ipc-pipe's `spin_limit(polls)`) into a time budget of
    /// `polls` x [`NANOS_PER_POLL`]; 0 never spins.
    pub const fn from_polls(polls: u32) -> Backoff {
        Backoff::with_max(Duration::from_nanos(polls as u64 * NANOS_PER_POLL as u64))
    }

    /// The maximum budget.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(u64::from(self.max_ns))
    }

    /// The current budget (a snapshot; other threads may change it).
    pub fn budget(&self) -> Duration {
        Duration::from_nanos(u64::from(self.load()))
    }

    fn min_ns(&self) -> u32 {
        MIN_NS.min(self.max_ns)
    }

    fn load(&self) -> u32 {
        self.budget_ns
            .load(Relaxed)
            .clamp(self.min_ns(), self.max_ns)
    }

    fn grow(&self) {
        let next = self
            .load()
            .saturating_mul(2)
            .clamp(self.min_ns(), self.max_ns);
        self.budget_ns.store(next, Relaxed);
    }

    fn shrink(&self) {
        let next = (self.load() / 2).clamp(self.min_ns(), self.max_ns);
        self.budget_ns.store(next, Relaxed);
    }

    /// Polls `ready` (with a spin hint between polls) until it returns `true` or the budget is
    /// spent; returns whether it did. Grows the budget if it succeeded late in the spin. Does
    /// not call `ready` at all when the budget is zero (and never under loom).
    #[inline]
    pub fn spin(&self, mut ready: impl FnMut() -> bool) -> bool {
        if cfg!(loom) {
            return false;
        }
        let budget = self.load();
        if budget == 0 {
            return false;
        }
        // The first CLOCK_EVERY polls are not timed: a peer that answers within them costs
        // no clock read at all.
        for _ in 0..CLOCK_EVERY {
            if ready() {
                return true;
            }
            spin_hint();
        }
        self.spin_slow(budget, ready)
    }

    #[cold]
    fn spin_slow(&self, budget: u32, mut ready: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        let budget = Duration::from_nanos(u64::from(budget));
        loop {
            for _ in 0..CLOCK_EVERY {
                if ready() {
                    self.grow();
                    return true;
                }
                spin_hint();
            }
            if start.elapsed() >= budget {
                return false;
            }
        }
    }

    /// After a failed [`Backoff::spin`] and a sleep that began at (or before) `started`:
    /// grows the budget if the wait was short, shrinks it if it was long.
    #[cold]
    pub fn slept(&self, started: Instant) {
        self.record_sleep(started.elapsed());
    }

    /// As [`Backoff::slept`], given how long the wait took.
    #[cold]
    pub fn record_sleep(&self, waited: Duration) {
        if waited < SHORT_SLEEP {
            self.grow();
        } else {
            self.shrink();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn grows_after_short_sleeps_and_clamps_at_max() {
        let b = Backoff::new();
        assert_eq!(b.budget(), Duration::from_nanos(u64::from(INITIAL_NS)));
        b.record_sleep(Duration::from_micros(5));
        assert_eq!(b.budget(), Duration::from_micros(8));
        for _ in 0..20 {
            b.record_sleep(Duration::ZERO);
        }
        assert_eq!(b.budget(), DEFAULT_MAX);
    }

    #[test]
    fn shrinks_after_long_sleeps_and_clamps_at_min() {
        let b = Backoff::new();
        b.record_sleep(Duration::from_millis(1));
        assert_eq!(b.budget(), Duration::from_micros(2));
        for _ in 0..20 {
            b.record_sleep(Duration::from_secs(1));
        }
        assert_eq!(b.budget(), Duration::from_nanos(u64::from(MIN_NS)));
        // It can always grow back.
        b.record_sleep(Duration::ZERO);
        assert_eq!(b.budget(), Duration::from_micros(2));
    }

    #[test]
    fn grows_after_a_late_success_only() {
        let b = Backoff::new();
        assert!(b.spin(|| true));
        assert_eq!(
            b.budget(),
            Duration::from_micros(4),
            "an early success keeps the budget"
        );
        let mut polls = 0;
        assert!(b.spin(|| {
            polls += 1;
            polls > 2 * CLOCK_EVERY
        }));
        assert_eq!(b.budget(), Duration::from_micros(8));
    }

    #[test]
    fn a_failed_spin_returns_false() {
        let b = Backoff::with_max(Duration::from_micros(2));
        let mut polls = 0u64;
        assert!(!b.spin(|| {
            polls += 1;
            false
        }));
        assert!(polls >= u64::from(CLOCK_EVERY));
        assert_eq!(b.budget(), Duration::from_micros(2), "clamped to max");
    }

    #[test]
    fn zero_max_never_spins() {
        for b in [Backoff::never(), Backoff::from_polls(0)] {
            let mut called = false;
            assert!(!b.spin(|| {
                called = true;
                true
            }));
            assert!(!called);
            b.record_sleep(Duration::ZERO);
            b.record_sleep(Duration::from_secs(1));
            assert_eq!(b.budget(), Duration::ZERO);
        }
    }

    #[test]
    fn clone_keeps_max_and_budget() {
        let b = Backoff::from_polls(400);
        b.record_sleep(Duration::from_secs(1));
        let c = b.clone();
        assert_eq!(c.max(), b.max());
        assert_eq!(c.budget(), b.budget());
    }

    #[test]
    fn polls_convert_to_time() {
        let b = Backoff::from_polls(4096);
        assert_eq!(b.max(), Duration::from_nanos(40_960));
        assert_eq!(
            Backoff::with_max(Duration::from_secs(100)).max(),
            Duration::from_nanos(u64::from(u32::MAX))
        );
    }

    #[test]
    fn shared_between_threads() {
        let b = std::sync::Arc::new(Backoff::new());
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        b.record_sleep(Duration::from_micros(i * 1000));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let now = b.budget();
        assert!(now >= Duration::from_micros(1) && now <= DEFAULT_MAX);
    }
}
