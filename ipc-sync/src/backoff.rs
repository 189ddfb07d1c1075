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
//! | the condition came true later in the spin | doubled (not in quarantine) | the peer answers in about this time: keep catching it |
//! | the spin failed, and the sleep that followed was short (< [`SHORT_SLEEP`]) | doubled (not in quarantine) | the peer was busy, not idle: a slightly longer spin would have caught it |
//! | the spin failed, and the sleep was long | halved | the peer is idle: stop burning the core |
//! | two clock reads of one spin were [`PREEMPTED`] (5 us) or more apart | the minimum, and a quarantine starts | this thread lost the CPU: the machine is oversubscribed |
//!
//! **Quarantine.** A spin that sees a gap of [`PREEMPTED`] between two clock reads (they are
//! ~0.2 us apart when the thread runs) was descheduled: another task, often the very peer it
//! waits for on the same core, needed this CPU. It gives up at once, the budget drops to the
//! minimum, and for [`QUARANTINE`] (1 ms, doubled for each preemption seen within one
//! quarantine of the last, up to 8 times, 8 ms) no spin goes past the untimed
//! [`CLOCK_EVERY`] polls and nothing grows the budget. Without it a same-core pair spins in
//! turn: the peer can answer only after we stop spinning, our sleep is therefore "short", and
//! the budget grew to and stayed at the maximum, so every exchange burned it (a hot 64 KiB
//! round trip at load ~2 went from 9 us to 18-102 us; 171 us with 4 busy-loop processes).
//!
//! It never falls below `MIN` (1 us, or `max` if that is lower): halving after every sleep
//! alone would be a trap, since below the peer's usual turnaround no spin would ever succeed
//! again and the budget could never grow back. A maximum of zero never spins.
//!
//! **Peers on one CPU.** [`Backoff::spin_beside`] does not spin at all for a peer whose last
//! recorded CPU ([`cpu_tag`], kept in shared memory by the peer) is the caller's: that peer is
//! not running (we are, on its CPU), so it can answer only once we stop. On a busy 2-vCPU
//! machine both parties of a round trip often share one core; the pipe's hot 64 B round trip
//! beside two CPU hogs went from 19.7-19.8 us to 1.7-3.9 us (`compare --workloads pipe_rtt_hot
//! --sizes 64,64k --reps 5 --load 2`, two interleaved A/B rounds; quiet 1.3-2.1 us against
//! 1.7-7.2 us before, asleep 2.1 us; 64 KiB unchanged).
//!
//! **Why no yield phase.** crossbeam's `Backoff` yields (`sched_yield`) between spins before
//! blocking; tried here (pure `PAUSE` for 2 us, then `yield_now` between polls up to the
//! budget), it was the best quiet-machine figure but a disaster with 4 busy-loop processes on 2
//! vCPUs: hot round trips of 1-6 **ms**, because on this kernel's EEVDF scheduler a yield pushes
//! the yielder's deadline back a whole slice, behind every busy task on that CPU.

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
//! The preemption threshold and the quarantine were chosen A/B on the same machine in one
//! interleaved run (benches' `compare --workloads pipe_rtt_hot,pipe_rtt_asleep,queue_spsc
//! --sizes 64,64k --reps 5`, 3 repetitions each; load 3-5 from other builds, then with 4
//! busy-loop processes added; medians of the repetitions, range in brackets). "Grow only"
//! is the policy without preemption detection:
//!
//! | round trip | grow only | this policy | asleep (no spin) |
//! |---|---|---|---|
//! | hot 64 B, load 3 | 0.86 us (0.62-94) | 3.8 us (3.1-4.1) | 2.2 us |
//! | hot 64 KiB, load 3 | 102 us (36-102) | 13.3 us (13.0-15.2) | 7.9-8.4 us |
//! | hot 64 B, + 4 busy loops | 213 us (97-265) | 12.7 us (2.8-47) | 2.3-6.6 us |
//! | hot 64 KiB, + 4 busy loops | 221 us (50-336) | 40.6 us (39-73) | 8.6-40 us |
//!
//! (That run used a 5-320 ms quarantine.) A 30 us threshold kept the quiet 64 B figure
//! (0.7-1.1 us) but left 64 KiB at 36-38 us; 5 us and 10 us measured alike (64 KiB 11.7-12.4
//! against 12.5-23.4 us), so the lower one stays. A quarantine of up to 320 ms was too sticky
//! once the load went away (criterion `round_trip_64B/pipe_hot` at load ~2: 2.7 us against
//! 0.63 us without detection); 1-8 ms gives 0.59 us there and measured alike under the busy
//! loops (hot 64 B 0.68-21 us, 64 KiB 23-66 us, against 10-12 and 32-42 us), and re-probing
//! costs at most one preempted spin (<= 50 us) per 8 ms, under 1%.
//! Hot is still somewhat slower than asleep on a loaded 2-vCPU machine (the first spin after
//! each quarantine pays for finding out again), but no longer by 10-50x.
//!
//! Under `--cfg loom` a backoff never spins (the models stay small; the sleeping path is the one
//! worth checking).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
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
/// A gap this long between two clock reads of one spin (which are ~0.2 us apart) means this
/// thread lost the CPU: it was preempted, so the machine is oversubscribed.
pub const PREEMPTED: Duration = Duration::from_micros(5);
/// After a preemption is seen, the budget stays at its minimum for this long (doubled for
/// each further preemption seen right after one, up to 8 times: 8 ms).
pub const QUARANTINE: Duration = Duration::from_millis(1);

const MIN_NS: u32 = 1_000;
const INITIAL_NS: u32 = 4_000;
const MAX_QUARANTINE_SHIFT: u32 = 3;

/// Nanoseconds since the first call in this process (a clock the atomics can hold).
fn now_ns(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// The calling thread's CPU as a party records it in shared memory for
/// [`Backoff::spin_beside`]: the CPU number plus one (0 means unknown, and is what a peer of
/// an older build, which never records one, leaves there). Always 0 under loom.
#[inline]
pub fn cpu_tag() -> u32 {
    if cfg!(loom) {
        return 0;
    }
    ipc_shm::os::current_cpu().wrapping_add(1)
}

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
    /// No growth before this time (`now_ns`): a preemption was seen recently.
    quiet_until_ns: AtomicU64,
    /// The last quarantine was `QUARANTINE << shift` (preemptions seen in a row).
    quarantine_shift: AtomicU32,
}

impl Clone for Backoff {
    /// A backoff with the same maximum, starting from this one's current budget (and
    /// quarantine).
    fn clone(&self) -> Backoff {
        Backoff {
            budget_ns: AtomicU32::new(self.budget_ns.load(Relaxed)),
            max_ns: self.max_ns,
            quiet_until_ns: AtomicU64::new(self.quiet_until_ns.load(Relaxed)),
            quarantine_shift: AtomicU32::new(self.quarantine_shift.load(Relaxed)),
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
        Backoff::with_max(DEFAULT_MAX)
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
            quiet_until_ns: AtomicU64::new(0),
            quarantine_shift: AtomicU32::new(0),
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

    /// Whether a preemption was seen within the quarantine before `now`.
    fn quarantined(&self, now: Instant) -> bool {
        let until = self.quiet_until_ns.load(Relaxed);
        until != 0 && now_ns(now) < until
    }

    /// Doubles the budget, unless a preemption was seen within the quarantine.
    fn grow(&self, now: Instant) {
        if self.quarantined(now) {
            return;
        }
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

    /// A spin lost the CPU at `now`: the machine is oversubscribed. Cuts the budget to its
    /// minimum and holds it there for the quarantine, which doubles if the last one has just
    /// ended (preemptions keep coming) and restarts from [`QUARANTINE`] otherwise.
    #[cold]
    fn preempted(&self, now: Instant) {
        let now = now_ns(now);
        let until = self.quiet_until_ns.load(Relaxed);
        let base = QUARANTINE.as_nanos() as u64;
        let shift = self.quarantine_shift.load(Relaxed);
        let shift = if until != 0 && now < until.saturating_add(base << shift) {
            (shift + 1).min(MAX_QUARANTINE_SHIFT)
        } else {
            0
        };
        self.quarantine_shift.store(shift, Relaxed);
        self.quiet_until_ns
            .store(now.saturating_add(base << shift), Relaxed);
        self.budget_ns.store(self.min_ns(), Relaxed);
    }

    /// [`spin`](Backoff::spin), unless the peer that would make `ready` true last ran on this
    /// very CPU: `peer_cpu` is what the peer recorded with [`cpu_tag`] (0: unknown, then this
    /// is a plain `spin`). A peer whose last CPU is ours is not running now (we are), so it can
    /// only answer after we stop: spinning would only delay it, most of all on a busy machine
    /// where both parties share one core. Returns `false` at once in that case, without
    /// touching the budget; the caller sleeps as after a failed spin.
    #[inline]
    pub fn spin_beside(&self, peer_cpu: u32, ready: impl FnMut() -> bool) -> bool {
        if peer_cpu != 0 && peer_cpu == cpu_tag() {
            return false;
        }
        self.spin(ready)
    }

    /// Polls `ready` (with a spin hint between polls) until it returns `true` or the budget is
    /// spent; returns whether it did. Gives up at once, and stops spinning past the first
    /// [`CLOCK_EVERY`] polls for the quarantine, if the thread lost the CPU for [`PREEMPTED`]
    /// during the spin. Grows the budget if it succeeded late in the spin. Does not call `ready` at all when the budget is zero (and
    /// never under loom).
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
        if self.quarantined(start) {
            // A preemption was seen lately: the machine is oversubscribed, and any spin
            // longer than the untimed polls takes the CPU from a task that could use it.
            return false;
        }
        let budget = Duration::from_nanos(u64::from(budget));
        let mut last = start;
        loop {
            for _ in 0..CLOCK_EVERY {
                if ready() {
                    self.grow(last);
                    return true;
                }
                spin_hint();
            }
            let now = Instant::now();
            if now.saturating_duration_since(last) >= PREEMPTED {
                self.preempted(now);
                return false;
            }
            last = now;
            let spent = now.saturating_duration_since(start);
            if spent >= budget {
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
            self.grow(Instant::now());
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
        let caught = b.spin(|| {
            polls += 1;
            polls > 2 * CLOCK_EVERY
        });
        // Unless the spin lost the CPU (a busy machine: it then gives up and quarantines),
        // catching the condition in the timed part doubles the budget.
        if b.quiet_until_ns.load(Relaxed) == 0 {
            assert!(caught);
            assert_eq!(b.budget(), Duration::from_micros(8));
        } else {
            assert_eq!(
                b.budget(),
                Duration::from_micros(1),
                "preempted: the minimum"
            );
        }
    }

    #[test]
    fn spin_beside_a_peer_on_this_cpu_polls_nothing() {
        let b = Backoff::new();
        // The thread may move to another CPU between `cpu_tag` and the check inside: retry.
        let refused = (0..1000).any(|_| {
            let mut polled = false;
            let caught = b.spin_beside(cpu_tag(), || {
                polled = true;
                true
            });
            !polled && !caught
        });
        assert!(refused, "a peer on this CPU was spun for");
        let mut polled = false;
        assert!(b.spin_beside(0, || {
            polled = true;
            true
        }));
        assert!(polled, "an unknown CPU is a plain spin");
        assert_ne!(cpu_tag(), 0);
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
        // A spin that lost the CPU (a busy machine) drops to the minimum and quarantines;
        // otherwise the initial 4 us was clamped to the maximum.
        if b.quiet_until_ns.load(Relaxed) == 0 {
            assert_eq!(b.budget(), Duration::from_micros(2), "clamped to max");
        } else {
            assert_eq!(
                b.budget(),
                Duration::from_micros(1),
                "preempted: the minimum"
            );
        }
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
    fn a_preemption_cuts_the_budget_and_quarantines_growth() {
        let b = Backoff::new();
        for _ in 0..4 {
            b.record_sleep(Duration::ZERO);
        }
        assert_eq!(b.budget(), DEFAULT_MAX);
        let t = Instant::now();
        b.preempted(t);
        assert_eq!(b.budget(), Duration::from_nanos(u64::from(MIN_NS)));
        // No growth within the quarantine, whatever the sleeps or spins say...
        b.grow(t + QUARANTINE / 2);
        b.preempted(Instant::now());
        b.record_sleep(Duration::ZERO);
        assert_eq!(b.budget(), Duration::from_nanos(u64::from(MIN_NS)));
        assert!(b.quarantined(t + QUARANTINE / 2));
        // ...and no timed spin either: only the untimed polls run.
        let mut polls = 0u32;
        b.preempted(Instant::now());
        assert!(!b.spin(|| {
            polls += 1;
            false
        }));
        assert_eq!(polls, CLOCK_EVERY);
        // After it, the budget grows again.
        let after = Instant::now() + QUARANTINE * (1 << MAX_QUARANTINE_SHIFT) * 2;
        assert!(!b.quarantined(after));
        b.grow(after);
        assert_eq!(b.budget(), Duration::from_micros(2));
    }

    #[test]
    fn preemptions_in_a_row_lengthen_the_quarantine() {
        let b = Backoff::new();
        let t = Instant::now();
        b.preempted(t);
        // Again just after the first quarantine ended: the next one is twice as long.
        let t2 = t + QUARANTINE + QUARANTINE / 2;
        b.preempted(t2);
        assert!(b.quarantined(t2 + QUARANTINE + QUARANTINE / 2));
        assert!(!b.quarantined(t2 + 2 * QUARANTINE + QUARANTINE / 2));
        // It is capped...
        let mut now = t2;
        for _ in 0..20 {
            now += QUARANTINE;
            b.preempted(now);
        }
        let cap = QUARANTINE * (1 << MAX_QUARANTINE_SHIFT);
        assert!(b.quarantined(now + cap - QUARANTINE / 2));
        assert!(!b.quarantined(now + cap + QUARANTINE / 2));
        // ...and starts over once preemptions stop for a while.
        let later = now + cap * 4;
        b.preempted(later);
        assert!(!b.quarantined(later + QUARANTINE + QUARANTINE / 2));
    }

    #[test]
    fn a_zero_max_backoff_is_never_quarantined_into_spinning() {
        let b = Backoff::never();
        b.preempted(Instant::now());
        assert_eq!(b.budget(), Duration::ZERO);
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
