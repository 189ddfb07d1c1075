//! [`Barrier`]: a reusable rendezvous of a fixed number of parties, with Python's broken state.
//!
//! # Algorithm
//!
//! One 32-bit word (the futex) holds the whole state, so an arrival and a trip can never be
//! confused: bits 0-15 `count` (parties arrived in this generation), bits 16-29 `gen` (the
//! generation, wrapping), bit 30 `RESETTING`, bit 31 `BROKEN`.
//!
//! - **wait**: arrive by CAS `count -> count + 1`, remembering `(gen, index = count)`. The
//!   party that makes `count == parties` instead CASes to `(gen + 1, count 0)` (the trip) and
//!   wakes everybody. The others sleep until `gen` moves (success: the arrival index is
//!   returned) or `BROKEN` appears in their generation (failure; they leave, decrementing
//!   `count`). Because arrival and trip are CASes on the one word, an early arrival of the
//!   next generation cannot be lost or counted in the old one.
//! - **timeout**: a waiter whose deadline passes breaks its generation (sets `BROKEN`) and
//!   returns `Timeout`; the others return `Broken` (Python's semantics).
//! - **abort**: sets `BROKEN`. Arrivals at a broken barrier fail at once.
//! - **reset**: if nobody is inside, starts a fresh generation; otherwise sets `BROKEN |
//!   RESETTING`, and the last waiter to leave starts the fresh generation. (Python blocks
//!   arrivals during a reset; here they get `Broken`, so nothing can block on a reset.)
//!
//! | word | meaning |
//! |---|---|
//! | `gen, count` | filling generation `gen` (all-zero memory: generation 0, empty) |
//! | `gen+1, 0` | generation `gen` tripped; its waiters return success |
//! | `BROKEN, gen, count` | broken; `count` waiters still inside |
//! | `BROKEN \| RESETTING, gen, count` | being reset; the last leaver clears it |
//!
//! ## Memory ordering
//!
//! All updates of the word are `AcqRel` CASes and waiters read it with `Acquire`, so what each
//! party did before `wait` is visible to every party after `wait` returns. Lost wake-ups are
//! excluded by the futex: a waiter sleeps only while the word holds the value it saw, and
//! every trip, break and reset changes the word before waking.
//!
//! # A party's death
//!
//! Each process that calls `wait` records its pid and start time in a table of
//! [`PARTY_SLOTS`] slots in the barrier. Waiters sleep in slices of
//! [`LIVENESS_SLICE`] and, after each slice, check the recorded
//! processes: if one has died (gone, zombie, or its pid reused), the waiter breaks the barrier
//! and every waiter returns `Broken`. So:
//!
//! - **Detected**: a process that has waited on the barrier at least once dies (at any point,
//!   inside `wait` or not) while others wait.
//! - **Not detected**: a process that dies before its first `wait`, processes beyond the first
//!   [`PARTY_SLOTS`], and a thread (not process) that dies. Use timeouts for those.
//! - A process that stops using the barrier for good while others go on must call
//!   [`Barrier::leave`], or its normal exit counts as a death.
//! - If the dead process was inside `wait`, its arrival stays counted, so `reset` cannot
//!   finish: the barrier stays broken. Make a new one.

use std::time::Duration;

use crate::futex::{Deadline, WaitOutcome};
use crate::lock::LIVENESS_SLICE;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::waiter::{Futex, Waiter};

const COUNT_MASK: u32 = 0xFFFF;
const GEN_SHIFT: u32 = 16;
const GEN_MASK: u32 = 0x3FFF;
const RESETTING: u32 = 1 << 30;
const BROKEN: u32 = 1 << 31;

/// How many processes a barrier tracks for death detection.
#[cfg(not(loom))]
pub const PARTY_SLOTS: usize = 16;
/// How many processes a barrier tracks for death detection.
#[cfg(loom)]
pub const PARTY_SLOTS: usize = 1;

/// The largest number of parties.
pub const MAX_PARTIES: u32 = COUNT_MASK;

fn gen_of(w: u32) -> u32 {
    (w >> GEN_SHIFT) & GEN_MASK
}

/// Why [`Barrier::wait`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BarrierWaitError {
    /// The barrier is broken (aborted, reset, another party timed out, or a party died),
    /// Python's `BrokenBarrierError`.
    #[error("the barrier is broken")]
    Broken,
    /// This call's timeout passed; it broke the barrier for the others.
    #[error("timed out waiting at the barrier (the barrier is now broken)")]
    Timeout,
    /// The barrier has no parties set (an unconfigured zero-filled barrier).
    #[error("the barrier has no parties configured")]
    NoParties,
}

/// One tracked process.
#[repr(C)]
#[derive(Debug)]
struct PartySlot {
    pid: AtomicU32,
    _pad: AtomicU32,
    start: AtomicU64,
}

/// A reusable barrier for `parties` threads or processes (Python's
/// `multiprocessing.Barrier`, minus the action callable).
///
/// Build it with [`Barrier::new`], or, in a zero-filled segment, call [`Barrier::configure`]
/// once before other processes use it (all-zero bytes are a barrier with no parties, whose
/// `wait` fails with [`BarrierWaitError::NoParties`]).
///
/// ```
/// use std::sync::Arc;
/// use ipc_sync::Barrier;
///
/// let b = Arc::new(Barrier::new(2));
/// let b2 = b.clone();
/// let t = std::thread::spawn(move || b2.wait().unwrap());
/// let mine = b.wait().unwrap();
/// let theirs = t.join().unwrap();
/// assert_eq!(mine + theirs, 1); // arrival indices 0 and 1
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct Barrier {
    word: AtomicU32,
    parties: AtomicU32,
    slots: [PartySlot; PARTY_SLOTS],
}

impl Barrier {
    /// A barrier for `parties` parties (at most [`MAX_PARTIES`]; clamped).
    pub fn new(parties: u32) -> Barrier {
        Barrier {
            word: AtomicU32::new(0),
            parties: AtomicU32::new(parties.min(MAX_PARTIES)),
            slots: std::array::from_fn(|_| PartySlot {
                pid: AtomicU32::new(0),
                _pad: AtomicU32::new(0),
                start: AtomicU64::new(0),
            }),
        }
    }

    /// Sets the number of parties of a zero-filled barrier. Only for initialisation, before
    /// other threads or processes use it.
    pub fn configure(&self, parties: u32) {
        self.parties
            .store(parties.min(MAX_PARTIES), Ordering::Release);
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.parties.load(Ordering::Acquire)
    }

    /// How many parties wait in the current generation (a snapshot).
    pub fn n_waiting(&self) -> u32 {
        let w = self.word.load(Ordering::Relaxed);
        if w & BROKEN != 0 { 0 } else { w & COUNT_MASK }
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.word.load(Ordering::Acquire) & BROKEN != 0
    }

    /// Waits until all parties have called `wait`; returns this party's arrival index
    /// (`0..parties`, the last arrival gets `parties - 1`).
    pub fn wait(&self) -> Result<u32, BarrierWaitError> {
        self.wait_deadline(None)
    }

    /// Like [`Barrier::wait`] for at most `timeout`; on timeout the barrier breaks (Python's
    /// semantics) and this call returns [`BarrierWaitError::Timeout`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32, BarrierWaitError> {
        self.wait_deadline(Some(Deadline::after(timeout)))
    }

    /// Like [`Barrier::wait`], until `deadline` (if any).
    pub fn wait_deadline(&self, deadline: Option<Deadline>) -> Result<u32, BarrierWaitError> {
        let parties = self.parties.load(Ordering::Acquire);
        if parties == 0 || parties > MAX_PARTIES {
            return Err(BarrierWaitError::NoParties);
        }
        self.register();
        let (my_gen, index) = loop {
            let w = self.word.load(Ordering::Acquire);
            if w & (BROKEN | RESETTING) != 0 {
                return Err(BarrierWaitError::Broken);
            }
            let count = w & COUNT_MASK;
            let generation = gen_of(w);
            if count + 1 >= parties {
                let tripped = ((generation + 1) & GEN_MASK) << GEN_SHIFT;
                if self
                    .word
                    .compare_exchange(w, tripped, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    Futex.wake(&self.word, u32::MAX);
                    return Ok(count);
                }
                continue;
            }
            if self
                .word
                .compare_exchange(w, w + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break (generation, count);
            }
        };
        loop {
            let w = self.word.load(Ordering::Acquire);
            if gen_of(w) != my_gen {
                return Ok(index);
            }
            if w & BROKEN != 0 {
                self.leave_broken(my_gen);
                return Err(BarrierWaitError::Broken);
            }
            if deadline.is_some_and(|d| d.has_passed()) {
                if self.break_generation(my_gen) {
                    self.leave_broken(my_gen);
                    return Err(BarrierWaitError::Timeout);
                }
                continue; // it tripped or broke meanwhile
            }
            let slice = Deadline::min_with(deadline, LIVENESS_SLICE);
            if Futex.wait(&self.word, w, Some(slice)) == WaitOutcome::TimedOut
                && self.a_party_died()
            {
                self.break_generation(my_gen);
            }
        }
    }

    /// Sets `BROKEN` if generation `generation` is still filling; returns whether it did.
    fn break_generation(&self, generation: u32) -> bool {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            if gen_of(w) != generation || w & BROKEN != 0 {
                return false;
            }
            match self.word.compare_exchange_weak(
                w,
                w | BROKEN,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    Futex.wake(&self.word, u32::MAX);
                    return true;
                }
                Err(now) => w = now,
            }
        }
    }

    /// A waiter of broken generation `generation` leaves; the last one finishes a reset.
    fn leave_broken(&self, generation: u32) {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            if gen_of(w) != generation || w & COUNT_MASK == 0 {
                return;
            }
            let left = w - 1;
            let new = if left & COUNT_MASK == 0 && left & RESETTING != 0 {
                ((generation + 1) & GEN_MASK) << GEN_SHIFT
            } else {
                left
            };
            match self
                .word
                .compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    if new & RESETTING == 0 && new & BROKEN == 0 {
                        Futex.wake(&self.word, u32::MAX);
                    }
                    return;
                }
                Err(now) => w = now,
            }
        }
    }

    /// Breaks the barrier: current and future waiters get `Broken` until [`Barrier::reset`].
    pub fn abort(&self) {
        let old = self.word.fetch_or(BROKEN, Ordering::AcqRel);
        if old & BROKEN == 0 {
            Futex.wake(&self.word, u32::MAX);
        }
    }

    /// Returns the barrier to its empty state; parties waiting now get `Broken`. The fresh
    /// generation starts once they have left (arrivals before that get `Broken` too).
    pub fn reset(&self) {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            let new = if w & COUNT_MASK == 0 {
                ((gen_of(w) + 1) & GEN_MASK) << GEN_SHIFT
            } else {
                w | BROKEN | RESETTING
            };
            match self
                .word
                .compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        Futex.wake(&self.word, u32::MAX);
    }

    /// Removes the calling process from the table of tracked parties (call it when this
    /// process stops using the barrier for good while others go on waiting).
    pub fn leave(&self) {
        #[cfg(not(loom))]
        {
            let (pid, _) = crate::owner::current_process();
            for slot in &self.slots {
                let _ = slot
                    .pid
                    .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Records the calling process in the party table (once; a no-op if the table is full).
    fn register(&self) {
        #[cfg(not(loom))]
        {
            let (pid, start) = crate::owner::current_process();
            let mut free = None;
            for slot in &self.slots {
                let p = slot.pid.load(Ordering::Acquire);
                if p == pid {
                    if slot.start.load(Ordering::Acquire) != start {
                        // A dead process with our (reused) pid: the slot is now ours.
                        slot.start.store(start, Ordering::Release);
                    }
                    return;
                }
                if p == 0 && free.is_none() {
                    free = Some(slot);
                }
            }
            for slot in free.into_iter().chain(self.slots.iter()) {
                if slot
                    .pid
                    .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    slot.start.store(start, Ordering::Release);
                    return;
                }
            }
        }
    }

    /// Whether a tracked process has died (and clears its slot).
    fn a_party_died(&self) -> bool {
        #[cfg(not(loom))]
        {
            let (me, _) = crate::owner::current_process();
            let mut died = false;
            for slot in &self.slots {
                let pid = slot.pid.load(Ordering::Acquire);
                if pid == 0 || pid == me {
                    continue;
                }
                let start = slot.start.load(Ordering::Acquire);
                if !crate::owner::process_alive(pid, start) {
                    let _ = slot
                        .pid
                        .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
                    died = true;
                }
            }
            died
        }
        #[cfg(loom)]
        false
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn generations_indices_and_reuse() {
        let b = Arc::new(Barrier::new(3));
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..200).map(|_| b.wait().unwrap()).collect::<Vec<_>>())
            })
            .collect();
        let mine: Vec<_> = (0..200).map(|_| b.wait().unwrap()).collect();
        let theirs: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        for i in 0..200 {
            let mut idx = [mine[i], theirs[0][i], theirs[1][i]];
            idx.sort();
            assert_eq!(idx, [0, 1, 2]);
        }
    }

    #[test]
    fn timeout_breaks_and_reset_repairs() {
        let b = Barrier::new(2);
        assert_eq!(
            b.wait_timeout(Duration::from_millis(10)),
            Err(BarrierWaitError::Timeout)
        );
        assert!(b.is_broken());
        assert_eq!(b.wait(), Err(BarrierWaitError::Broken));
        b.reset();
        assert!(!b.is_broken());
        assert_eq!(b.n_waiting(), 0);
        let zero = Barrier::new(0);
        assert_eq!(zero.wait(), Err(BarrierWaitError::NoParties));
    }

    #[test]
    fn abort_and_reset_release_waiters() {
        let b = Arc::new(Barrier::new(3));
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.wait());
        while b.n_waiting() == 0 {
            std::thread::yield_now();
        }
        b.reset();
        assert_eq!(t.join().unwrap(), Err(BarrierWaitError::Broken));
        assert!(!b.is_broken(), "the last leaver finished the reset");
        b.abort();
        assert_eq!(b.wait(), Err(BarrierWaitError::Broken));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// Two generations with two parties: every wait returns and indices are {0, 1} each time
    /// (an arrival lost to the next generation would deadlock).
    #[test]
    fn generations() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let b = Arc::new(Barrier::new(2));
            let b2 = b.clone();
            let t = loom::thread::spawn(move || [b2.wait().unwrap(), b2.wait().unwrap()]);
            let mine = [b.wait().unwrap(), b.wait().unwrap()];
            let theirs = t.join().unwrap();
            assert_eq!(mine[0] + theirs[0], 1);
            assert_eq!(mine[1] + theirs[1], 1);
        });
    }

    /// An abort while a party waits: the waiter returns `Broken`, never hangs.
    #[test]
    fn abort_wakes_the_waiter() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let b = Arc::new(Barrier::new(2));
            let b2 = b.clone();
            let t = loom::thread::spawn(move || b2.wait());
            b.abort();
            assert_eq!(t.join().unwrap(), Err(BarrierWaitError::Broken));
        });
    }
}
