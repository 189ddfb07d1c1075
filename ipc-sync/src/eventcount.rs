//! [`EventCount`]: the workspace's one "waiter count + sequence" wake protocol, for shared
//! memory.
//!
//! An event count lets a thread or process sleep until *some other condition* (a queue's
//! `tail`, a semaphore's permits, a flag under a lock) may have changed, and lets the side that
//! changes it wake sleepers with a system call only when somebody may be sleeping. The
//! condition lives elsewhere; the event count only carries the wake-up. `Condition`,
//! `Semaphore` and the queue's space, data and join waits are built on it.
//!
//! # Protocol
//!
//! ```text
//! waiter                                   notifier
//! loop {                                   change the condition
//!     if ready() { break }                 ec.notify(n)
//!     let token = ec.listen();
//!     if ready() { ec.cancel(token); break }
//!     ec.wait(token, deadline);
//! }
//! ```
//!
//! One 32-bit word (the futex): bits 0-9 `count`, registrations that may still need a wake;
//! bits 10-31 `seq`, bumped by a notify that finds `count > 0`. Registrations are fungible:
//! `count` is a number, not a list, and the rules below keep it at least the number of live
//! waiters that are asleep on the word or may still fall asleep on it.
//!
//! - **listen**: `count += 1` (a CAS; at [`MAX_REGISTERED`] the waiter stays unregistered and
//!   sleeps in slices of [`UNREGISTERED_SLICE`] instead), remembering the whole word.
//! - **wait**: sleep while the word holds the remembered value, then:
//!   - `seq` moved: return `Notified` without decrementing: the notify took the registration
//!     at its bump (below), or left it as an over-count that a later notify clears.
//!   - `seq` unchanged, woken by a `FUTEX_WAKE`: the wake was meant for an older sleeper and
//!     this waiter (registered after that notify's bump) *stole* it; the older one may be left
//!     asleep without a registration, so the thief adds one (`count += 1`; if `count` is full it
//!     passes the wake on with `FUTEX_WAKE(1)` instead) and sleeps again.
//!   - `seq` unchanged otherwise (a signal, `count` changed): sleep again on the new value.
//!   - timed out (or [`cancel`](EventCount::cancel)): take the registration back,
//!     `count -= 1`, but only while `seq` has not moved (a moved `seq` means a notify took it).
//! - **notify(n)**: read the word with a read-modify-write. `count == 0`: done, no system call.
//!   Otherwise, in one CAS, bump `seq` and take `m = min(n, count)` registrations, then
//!   `FUTEX_WAKE(n)`. If the kernel woke fewer than `n`, nobody was left asleep on the word, so
//!   the `count - m` registrations older than the bump belong to waiters that returned, are
//!   returning (their `seq` moved, so they cannot fall asleep again), or are **dead**: the
//!   notifier takes them too (a CAS that only succeeds if no other notify bumped `seq` since).
//!
//! | word | meaning |
//! |---|---|
//! | `seq s, count 0` | nobody registered: notify is one atomic read-modify-write (all-zero memory is this state) |
//! | `seq s, count k` | up to `k` waiters may sleep: the next notify bumps, takes `min(n, k)` and wakes `n` |
//! | `seq s+1, count k-m` | a notify took `m` and is waking; if its wake drains the sleepers it takes the rest |
//!
//! Why no wake-up is lost: after a notify's bump and wake, the sleepers registered before the
//! bump and still asleep are at most `count - m` when the wake woke `n` (it woke `n` of them or
//! thieves that re-add one each), and zero when it woke fewer (it drained them); registrations
//! after the bump are counted by themselves. So a notify that reads `count == 0` has nobody to
//! wake. The loom models below check this, including the stolen wake.
//!
//! ## Sleeping elsewhere (async waiters)
//!
//! A waiter need not sleep in [`EventCount::wait`]: it may `listen`, re-check, and hand its
//! token to a thread that sleeps for many waiters at once ([`futex::wait_any`] over each
//! event count's [`futex_word`](EventCount::futex_word), with the value
//! [`pending`](EventCount::pending) returned). `pending` is `wait`'s check (`seq` moved:
//! notified), and [`stolen_wake`](EventCount::stolen_wake) is its stolen-wake step, so the
//! registration rules above, and the notifier's side, are the same. `ipc-queue`'s async reactor
//! works this way.
//!
//! ## A waiter's death
//!
//! A waiter SIGKILLed while asleep leaves the kernel's sleep queue but not `count`. The next
//! notify takes its registration at the bump (or, if it takes fewer than `count`, its wake
//! finds fewer sleepers than asked and takes the rest), so the count returns to zero after the
//! next notify; the cost of a death is that one notify's `FUTEX_WAKE` (72 ns), not one per
//! operation forever. Only racing notifies (the second skips the clean-up) or a notify whose
//! `n` live sleepers all wake leave it for a later notify. A registration left by a genuinely
//! spurious kernel wake-up, a returning waiter or a thief is cleared the same way.
//!
//! Such over-counts cost nothing while somebody sleeps (the notify wakes anyway) and one wasted
//! `FUTEX_WAKE` when the sleepers run out (that notify drains and clears them). If a long busy
//! period with more sleepers than each notify wakes piles up [`MAX_REGISTERED`] of them, new
//! waiters sleep unregistered: still woken by every notify (the count is not zero, so each
//! notify wakes), with [`UNREGISTERED_SLICE`] as a backstop, until a drain clears the count.
//!
//! ## Memory ordering
//!
//! Notifier: "change the condition, then read `count`"; waiter: "raise `count`, then read the
//! condition". With plain loads this store-buffering pattern could miss on both sides. Both
//! sides therefore access the word with read-modify-writes (`listen`'s CAS and `notify`'s
//! `fetch_add(0)`, both `AcqRel`), which are totally ordered on the one word: if the notify's
//! comes first, the waiter's reads from it (or from a later RMW of its release sequence) and
//! synchronises with it, so the condition change happens-before the waiter's re-check; if the
//! waiter's comes first, the notify reads `count > 0` and wakes. The `seq` bump is `AcqRel` and
//! waiters load the word with `Acquire`, so a waiter that returns `Notified` sees what the
//! notifier wrote before notifying. The futex compares the word atomically with respect to
//! wake-ups, so a bump between a waiter's read and its sleep makes the sleep fail
//! (`EAGAIN`).
//!
//! `seq` has 22 bits. A waiter that reads the word, is descheduled while exactly 2^22 bumps
//! (each with a wake system call, so at least ~0.3 s) happen and `count` returns to the same
//! value, and only then calls `futex_wait`, would sleep on a stale value; every futex event
//! count has such a wrap-around window (the earlier separate 32-bit `seq` was bumped on every
//! notify, without a system call, so it wrapped in a comparable time).

#[cfg(doc)]
use crate::futex;
use crate::futex::{Deadline, WaitOutcome};
use crate::sync::{AtomicU32, Ordering};
use crate::waiter::{Futex, Waiter};

const COUNT_BITS: u32 = 10;
const COUNT_MASK: u32 = (1 << COUNT_BITS) - 1;
const SEQ_ONE: u32 = 1 << COUNT_BITS;

/// The most waiters an event count registers at once; more sleep unregistered, in slices.
pub const MAX_REGISTERED: u32 = COUNT_MASK;

/// How long an unregistered waiter (beyond [`MAX_REGISTERED`]) sleeps before re-checking.
pub const UNREGISTERED_SLICE: std::time::Duration = std::time::Duration::from_millis(1);

#[inline]
fn count(w: u32) -> u32 {
    w & COUNT_MASK
}

#[inline]
fn seq(w: u32) -> u32 {
    w & !COUNT_MASK
}

/// A waiter count and a sequence number in one futex word (see the module docs).
///
/// `#[repr(C)]`, one atomic, [`ipc_shm::ShmSafe`]; all-zero bytes are an event count with no
/// waiters.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use ipc_sync::{EventCount, Futex};
///
/// let shared = Arc::new((AtomicBool::new(false), EventCount::new()));
/// let s2 = shared.clone();
/// let t = std::thread::spawn(move || {
///     s2.0.store(true, Ordering::Release);
///     s2.1.notify_all();
/// });
/// assert!(shared.1.wait_until(&Futex, None, || shared.0.load(Ordering::Acquire)));
/// t.join().unwrap();
/// assert_eq!(shared.1.waiters(), 0);
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct EventCount {
    word: AtomicU32,
}

/// A registration made by [`EventCount::listen`]: pass it to [`EventCount::wait`] or
/// [`EventCount::cancel`].
#[must_use = "a token must be waited on or cancelled, or the registration costs the next notify a wake call"]
#[derive(Debug)]
pub struct Token {
    /// The word as this registration left it.
    seen: u32,
    /// Whether `count` holds this waiter (false beyond `MAX_REGISTERED`).
    registered: bool,
}

impl Token {
    /// Whether the registration is counted. `false` beyond [`MAX_REGISTERED`]: such a waiter
    /// is still woken by every notify while the count is not zero, but must also re-check
    /// after each [`UNREGISTERED_SLICE`] (as [`EventCount::wait`] does for it).
    pub fn is_registered(&self) -> bool {
        self.registered
    }
}

/// How [`EventCount::wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventWait {
    /// A notify came after the [`EventCount::listen`] (or, rarely, a spurious return):
    /// re-check the condition.
    Notified,
    /// The deadline passed without a notify.
    TimedOut,
}

impl Default for EventCount {
    fn default() -> Self {
        EventCount::new()
    }
}

impl EventCount {
    /// An event count with no waiters (the same as all-zero bytes).
    pub fn new() -> EventCount {
        EventCount {
            word: AtomicU32::new(0),
        }
    }

    /// How many waiters are registered (a snapshot; includes dead ones until a notify clears
    /// them).
    pub fn waiters(&self) -> u32 {
        count(self.word.load(Ordering::Relaxed))
    }

    /// Registers the caller as a waiter. Re-check the condition after this, then
    /// [`wait`](EventCount::wait) or [`cancel`](EventCount::cancel).
    #[inline]
    pub fn listen(&self) -> Token {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            if count(w) == COUNT_MASK {
                // Full: stay unregistered, but still order this read with notifiers.
                let w = self.word.fetch_add(0, Ordering::AcqRel);
                return Token {
                    seen: w,
                    registered: false,
                };
            }
            match self
                .word
                .compare_exchange_weak(w, w + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Token {
                        seen: w + 1,
                        registered: true,
                    };
                }
                Err(now) => w = now,
            }
        }
    }

    /// Takes back a registration whose wait is no longer needed (the condition came true).
    #[inline]
    pub fn cancel(&self, token: Token) {
        if token.registered {
            self.leave(seq(token.seen));
        }
    }

    /// Sleeps through the [`Futex`] until a notify after `token`'s [`listen`](EventCount::listen)
    /// or `deadline`.
    pub fn wait(&self, token: Token, deadline: Option<Deadline>) -> EventWait {
        self.wait_with(&Futex, token, deadline)
    }

    /// As [`EventCount::wait`], sleeping through `waiter`.
    #[cold]
    pub fn wait_with<W: Waiter + ?Sized>(
        &self,
        waiter: &W,
        token: Token,
        deadline: Option<Deadline>,
    ) -> EventWait {
        let s = seq(token.seen);
        let mut cur = token.seen;
        loop {
            if deadline.is_some_and(|d| d.has_passed()) {
                return self.give_up(&token, s);
            }
            let slice = if token.registered {
                deadline
            } else {
                Some(Deadline::min_with(deadline, UNREGISTERED_SLICE))
            };
            let outcome = waiter.wait(&self.word, cur, slice);
            let w = self.word.load(Ordering::Acquire);
            if seq(w) != s {
                return EventWait::Notified;
            }
            match outcome {
                WaitOutcome::Woken if token.registered => match self.compensate(waiter, s) {
                    Some(now) => cur = now,
                    None => return EventWait::Notified,
                },
                WaitOutcome::Woken => return EventWait::Notified,
                WaitOutcome::TimedOut if deadline.is_some_and(|d| d.has_passed()) => {
                    return self.give_up(&token, s);
                }
                // A slice ended: let the caller re-check.
                WaitOutcome::TimedOut if !token.registered => return EventWait::Notified,
                _ => cur = w,
            }
        }
    }

    /// Woken with `seq` still `s`: a stolen wake. Re-adds the registration an older sleeper
    /// may have lost (or passes the wake on when `count` is full). Returns the word to sleep
    /// on, or `None` if `seq` moved meanwhile (notified).
    #[cold]
    fn compensate<W: Waiter + ?Sized>(&self, waiter: &W, s: u32) -> Option<u32> {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if seq(w) != s {
                return None;
            }
            if count(w) == COUNT_MASK {
                waiter.wake(&self.word, 1);
                return Some(w);
            }
            match self
                .word
                .compare_exchange_weak(w, w + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(w + 1),
                Err(now) => w = now,
            }
        }
    }

    fn give_up(&self, token: &Token, s: u32) -> EventWait {
        if token.registered {
            self.leave(s)
        } else if seq(self.word.load(Ordering::Acquire)) != s {
            EventWait::Notified
        } else {
            EventWait::TimedOut
        }
    }

    /// Removes a registration made at `s`, unless a notifier already took it (`seq` moved).
    fn leave(&self, s: u32) -> EventWait {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if seq(w) != s {
                return EventWait::Notified;
            }
            if count(w) == 0 {
                // Cannot happen while the invariant holds; never underflow into `seq`.
                return EventWait::TimedOut;
            }
            match self
                .word
                .compare_exchange_weak(w, w - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return EventWait::TimedOut,
                Err(now) => w = now,
            }
        }
    }

    /// The futex word, for a waiter that sleeps on many event counts at once through
    /// [`futex::wait_any`] instead of [`wait`](EventCount::wait) (an
    /// async reactor): sleep on it while it holds the value [`pending`](EventCount::pending)
    /// returned. Never store to it.
    pub fn futex_word(&self) -> &AtomicU32 {
        &self.word
    }

    /// The external-sleeper form of [`wait`](EventCount::wait)'s check: `None` when a notify
    /// came after `token`'s [`listen`](EventCount::listen) (the wait is over, as `wait`
    /// returning [`EventWait::Notified`]: re-check the condition; the token is spent), or
    /// `Some(value)`: the word's current value, to sleep on with
    /// [`futex::wait_any`] (a notify changes the word, so the sleep
    /// cannot miss it). The load is `Acquire`, as in `wait`.
    ///
    /// ```
    /// use ipc_sync::EventCount;
    /// let ec = EventCount::new();
    /// let token = ec.listen();
    /// let value = ec.pending(&token).expect("no notify yet");
    /// // ... sleep on `ec.futex_word()` while it holds `value`, with other words ...
    /// # let _ = value;
    /// ec.notify_all();
    /// assert_eq!(ec.pending(&token), None); // notified: re-check the condition
    /// ```
    pub fn pending(&self, token: &Token) -> Option<u32> {
        let w = self.word.load(Ordering::Acquire);
        (seq(w) == seq(token.seen)).then_some(w)
    }

    /// The external-sleeper form of [`wait`](EventCount::wait)'s stolen-wake step: call it
    /// when a sleep on [`futex_word`](EventCount::futex_word) was ended by a wake-up (for
    /// [`futex::wait_any`]: `Woken` with this word's index) while
    /// [`pending`](EventCount::pending) still returns `Some` for every token the sleeper
    /// holds on this event count. The wake was meant for an older sleeper, which may now sleep
    /// without a registration; this re-adds one (or passes the wake on when the count is full),
    /// exactly as a waiter in `wait` does. Then sleep again.
    pub fn stolen_wake(&self, token: &Token) {
        if token.registered {
            let _ = self.compensate(&Futex, seq(token.seen));
        }
    }

    /// Waits until `ready()` returns true or `deadline` passes, returning its last value: the
    /// whole protocol (check, listen, re-check, wait) in one call.
    pub fn wait_until<W: Waiter + ?Sized>(
        &self,
        waiter: &W,
        deadline: Option<Deadline>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        loop {
            if ready() {
                return true;
            }
            let token = self.listen();
            if ready() {
                self.cancel(token);
                return true;
            }
            if self.wait_with(waiter, token, deadline) == EventWait::TimedOut {
                return ready();
            }
        }
    }

    /// Wakes up to `n` waiters through the [`Futex`]; a system call only if somebody is
    /// registered. Returns how many the kernel woke.
    #[inline]
    pub fn notify(&self, n: u32) -> usize {
        self.notify_with(&Futex, n)
    }

    /// Wakes one waiter.
    #[inline]
    pub fn notify_one(&self) -> usize {
        self.notify(1)
    }

    /// Wakes every waiter.
    #[inline]
    pub fn notify_all(&self) -> usize {
        self.notify(u32::MAX)
    }

    /// As [`EventCount::notify`], waking through `waiter`.
    #[inline]
    pub fn notify_with<W: Waiter + ?Sized>(&self, waiter: &W, n: u32) -> usize {
        // Read-modify-write: see "Memory ordering".
        let w = self.word.fetch_add(0, Ordering::AcqRel);
        if count(w) == 0 {
            return 0;
        }
        self.notify_slow(waiter, w, n)
    }

    #[cold]
    fn notify_slow<W: Waiter + ?Sized>(&self, waiter: &W, mut w: u32, n: u32) -> usize {
        // Bump `seq` and take `m = min(n, count)` registrations, in one CAS.
        let (bumped, left) = loop {
            let c = count(w);
            if c == 0 {
                return 0;
            }
            let left = c - c.min(n);
            let new = seq(w).wrapping_add(SEQ_ONE) | left;
            match self
                .word
                .compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break (new, left),
                Err(now) => w = now,
            }
        };
        let woken = waiter.wake(&self.word, n);
        if left > 0 && woken < n as usize {
            // Nobody was left asleep: the registrations before the bump that were not taken
            // are returned, returning or dead. Take them, unless another notify bumped since
            // (then it owns them).
            let mut cur = self.word.load(Ordering::Relaxed);
            while seq(cur) == seq(bumped) && count(cur) >= left {
                match self.word.compare_exchange_weak(
                    cur,
                    cur - left,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => cur = now,
                }
            }
        }
        woken
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn notify_without_waiters_is_free_and_keeps_seq() {
        let ec = EventCount::new();
        assert_eq!(ec.notify_all(), 0);
        assert_eq!(ec.word.load(Ordering::Relaxed), 0);
    }

    /// An external sleeper's view: `pending` until a notify, and a stolen wake re-adds the
    /// registration an older sleeper may have lost, as a thread in `wait` does.
    #[test]
    fn external_sleeper_pending_and_stolen_wake() {
        let ec = EventCount::new();
        let token = ec.listen();
        assert!(token.is_registered());
        let value = ec.pending(&token).unwrap();
        assert_eq!(value, ec.futex_word().load(Ordering::Relaxed));
        ec.stolen_wake(&token);
        assert_eq!(
            ec.waiters(),
            2,
            "one registration added for the robbed sleeper"
        );
        ec.notify_all();
        assert_eq!(ec.pending(&token), None);
        assert_eq!(ec.waiters(), 0);
    }

    #[test]
    fn timeout_takes_the_registration_back() {
        let ec = EventCount::new();
        let t = ec.listen();
        assert_eq!(ec.waiters(), 1);
        let r = ec.wait(t, Some(Deadline::after(Duration::from_millis(5))));
        assert_eq!(r, EventWait::TimedOut);
        assert_eq!(ec.waiters(), 0);
    }

    #[test]
    fn abandoned_registration_is_cleared_by_the_next_notify() {
        let ec = EventCount::new();
        let t = ec.listen();
        drop(t); // a waiter that died without waiting or cancelling
        assert_eq!(ec.waiters(), 1);
        assert_eq!(ec.notify_one(), 0);
        assert_eq!(ec.waiters(), 0);
        // Later notifies are free again.
        let before = ec.word.load(Ordering::Relaxed);
        ec.notify_one();
        assert_eq!(ec.word.load(Ordering::Relaxed), before);
    }

    #[test]
    fn notify_before_wait_is_seen() {
        let ec = EventCount::new();
        let t = ec.listen();
        ec.notify_one();
        assert_eq!(ec.wait(t, None), EventWait::Notified);
    }

    #[test]
    fn full_count_waiters_still_wake() {
        let ec = Arc::new(EventCount::new());
        ec.word.store(COUNT_MASK, Ordering::Relaxed);
        let flag = Arc::new(AtomicBool::new(false));
        let (e2, f2) = (ec.clone(), flag.clone());
        let t =
            std::thread::spawn(move || e2.wait_until(&Futex, None, || f2.load(Ordering::Acquire)));
        flag.store(true, Ordering::Release);
        ec.notify_all();
        assert!(t.join().unwrap());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    fn setup() -> (Arc<EventCount>, Arc<AtomicU32>) {
        crate::waiter::loom_timeouts_fire(false);
        (Arc::new(EventCount::new()), Arc::new(AtomicU32::new(0)))
    }

    /// An external sleeper's wait (the async reactor's steps): `pending` gives the value to
    /// sleep on, a wake-up with `pending` still `Some` is a stolen wake (`stolen_wake`).
    fn external_wait_until(ec: &EventCount, mut ready: impl FnMut() -> bool) {
        loop {
            if ready() {
                return;
            }
            let token = ec.listen();
            if ready() {
                ec.cancel(token);
                return;
            }
            while let Some(value) = ec.pending(&token) {
                if Futex.wait(ec.futex_word(), value, None) == WaitOutcome::Woken
                    && ec.pending(&token).is_some()
                {
                    ec.stolen_wake(&token);
                }
            }
        }
    }

    /// A waiter that sleeps elsewhere (as the async reactor does for a task) is reached by a
    /// notify like a sleeper in `wait`: a lost wake-up is a loom deadlock.
    #[test]
    fn external_sleeper_is_not_lost() {
        loom::model(|| {
            let (ec, flag) = setup();
            let (e2, f2) = (ec.clone(), flag.clone());
            let t = loom::thread::spawn(move || {
                f2.store(1, Ordering::Release);
                e2.notify_all();
            });
            external_wait_until(&ec, || flag.load(Ordering::Acquire) == 1);
            t.join().unwrap();
        });
    }

    /// An external sleeper and a thread in `wait`, for two permits that come with one
    /// `notify_one` each: both return (a wake taken by the wrong one is passed on by the
    /// stolen-wake rule on either side).
    #[test]
    fn external_and_thread_sleepers_share_notifies() {
        loom::model(|| {
            let (ec, permits) = setup();
            let take = |p: &AtomicU32| {
                let mut v = p.load(Ordering::Acquire);
                while v > 0 {
                    match p.compare_exchange(v, v - 1, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => return true,
                        Err(now) => v = now,
                    }
                }
                false
            };
            let (e2, p2) = (ec.clone(), permits.clone());
            let thread_sleeper =
                loom::thread::spawn(move || while !e2.wait_until(&Futex, None, || take(&p2)) {});
            let (e3, p3) = (ec.clone(), permits.clone());
            let external = loom::thread::spawn(move || external_wait_until(&e3, || take(&p3)));
            for _ in 0..2 {
                permits.fetch_add(1, Ordering::AcqRel);
                ec.notify_one();
            }
            thread_sleeper.join().unwrap();
            external.join().unwrap();
        });
    }

    /// A waiter waits for a flag that a notifier sets and notifies once: a lost wake-up would
    /// leave it asleep (loom reports a deadlock).
    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            let (ec, flag) = setup();
            let (e2, f2) = (ec.clone(), flag.clone());
            let t = loom::thread::spawn(move || {
                f2.store(1, Ordering::Release);
                e2.notify_one();
            });
            assert!(ec.wait_until(&Futex, None, || flag.load(Ordering::Acquire) == 1));
            t.join().unwrap();
            assert_eq!(ec.waiters(), 0);
        });
    }

    /// A notify that comes between listen and wait ends the wait.
    #[test]
    fn notify_before_wait() {
        loom::model(|| {
            let (ec, _) = setup();
            let token = ec.listen();
            let e2 = ec.clone();
            let t = loom::thread::spawn(move || {
                e2.notify_one();
            });
            t.join().unwrap();
            assert_eq!(ec.wait(token, None), EventWait::Notified);
        });
    }

    /// Two waiters, each takes one of two permits that come with one `notify_one` each: both
    /// must return (a wake stolen by a late registrant must not strand the other).
    #[test]
    fn two_waiters_one_notify_each() {
        loom::model(|| {
            let (ec, permits) = setup();
            // Takes a permit if there is one (a failed CAS is retried, not taken for "none").
            let take = |p: &AtomicU32| {
                let mut v = p.load(Ordering::Acquire);
                while v > 0 {
                    match p.compare_exchange(v, v - 1, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => return true,
                        Err(now) => v = now,
                    }
                }
                false
            };
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let (e, p) = (ec.clone(), permits.clone());
                    loom::thread::spawn(move || while !e.wait_until(&Futex, None, || take(&p)) {})
                })
                .collect();
            for _ in 0..2 {
                permits.fetch_add(1, Ordering::AcqRel);
                ec.notify_one();
            }
            for h in hs {
                h.join().unwrap();
            }
        });
    }

    /// Two waiters, one `notify_all`: both return, and the count ends at zero.
    #[test]
    fn two_waiters_one_notify_all() {
        loom::model(|| {
            let (ec, flag) = setup();
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let (e, f) = (ec.clone(), flag.clone());
                    loom::thread::spawn(move || {
                        assert!(e.wait_until(&Futex, None, || f.load(Ordering::Acquire) == 1));
                    })
                })
                .collect();
            flag.store(1, Ordering::Release);
            ec.notify_all();
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!(ec.waiters(), 0);
        });
    }

    /// Waiters for different conditions: one that registers after a notify's bump can be woken
    /// by that notify's wake (a stolen wake; it re-adds a registration and sleeps again). The
    /// later notify must still reach it, and the count ends at zero. (Reaching the stolen wake
    /// takes three preemptions, so this model sets its own bound.)
    #[test]
    fn stolen_wake_is_compensated() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let (ec, level) = setup();
            let hs: Vec<_> = [1, 2]
                .into_iter()
                .map(|want| {
                    let (e, l) = (ec.clone(), level.clone());
                    loom::thread::spawn(move || {
                        assert!(e.wait_until(&Futex, None, || l.load(Ordering::Acquire) >= want));
                    })
                })
                .collect();
            level.store(1, Ordering::Release);
            ec.notify_all();
            level.store(2, Ordering::Release);
            ec.notify_all();
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!(ec.waiters(), 0);
        });
    }

    /// A waiter dies registered (its token is abandoned, as a SIGKILL mid-sleep leaves it)
    /// while a live waiter waits: the live one is still woken, and after the notify (and the
    /// live waiter's return) the count is back to zero.
    #[test]
    fn dead_waiter_is_cleared_without_losing_a_live_one() {
        loom::model(|| {
            let (ec, flag) = setup();
            let e_dead = ec.clone();
            let dead = loom::thread::spawn(move || {
                drop(e_dead.listen());
            });
            let (e_live, f_live) = (ec.clone(), flag.clone());
            let live = loom::thread::spawn(move || {
                assert!(e_live.wait_until(&Futex, None, || f_live.load(Ordering::Acquire) == 1));
            });
            dead.join().unwrap();
            flag.store(1, Ordering::Release);
            ec.notify_all();
            live.join().unwrap();
            assert_eq!(ec.waiters(), 0);
        });
    }

    /// As above with `notify_one`, which takes one registration at its bump and the rest only
    /// if its wake found fewer sleepers than asked: the live waiter is woken, and one more
    /// notify at most brings the count back to zero.
    #[test]
    fn dead_waiter_and_notify_one() {
        loom::model(|| {
            let (ec, flag) = setup();
            drop(ec.listen()); // the dead waiter
            let (e_live, f_live) = (ec.clone(), flag.clone());
            let live = loom::thread::spawn(move || {
                assert!(e_live.wait_until(&Futex, None, || f_live.load(Ordering::Acquire) == 1));
            });
            flag.store(1, Ordering::Release);
            ec.notify_one();
            live.join().unwrap();
            ec.notify_one();
            assert_eq!(ec.waiters(), 0);
        });
    }
}
