//! [`Lock`]: a futex mutex for shared memory that survives its owner's death.
//!
//! # Algorithm
//!
//! The lock word (the futex) holds the owner's kernel thread id in its low 30 bits (0 =
//! unlocked), a `WAITERS` bit (bit 31) that says "somebody may sleep on this word", and an
//! `OWNER_DIED` hint (bit 30, as in the kernel's robust futexes) that a death watch sets when it
//! sees the owner exit (see "Owner death").
//!
//! - **Lock, fast path**: one `compare_exchange(0, tid)`. No system call.
//! - **Lock, slow path**: set `WAITERS` and `FUTEX_WAIT` on the word at once, without spinning
//!   (see "Why the lock does not spin" below; the spin step is still there, driven by one
//!   process-wide [`Backoff`] whose policy is [`Backoff::never`]). After having slept, a thread acquires with
//!   `tid | WAITERS` (it cannot know whether others still sleep), as in Drepper's "Futexes are
//!   tricky", mutex 3. `FUTEX_WAIT` returns at once when the word changed in between, so a
//!   holder that was about to unlock costs one cheap system call, not a sleep.
//! - **Unlock**: `swap(0)`; `FUTEX_WAKE(1)` only if the old value had `WAITERS`. No system call
//!   when nobody waits.
//!
//! ## Why the lock does not spin
//!
//! A contended lock is usually a hand-off: the holder unlocks and, a few nanoseconds later,
//! locks again (a loop of short critical sections). A waiter that spins, even one that tries
//! to take the word on every poll, rarely sees it free in that window, and the holder takes
//! it back again and again. A waiter that sets `WAITERS` and calls `FUTEX_WAIT` makes the
//! holder's next unlock a `FUTEX_WAKE`, and during that system call the word stays free for
//! the waiter: the hand-off happens at once. glibc's default mutex works the same way and
//! never spins.
//!
//! Measured on the 2-vCPU reference VM (Intel Xeon), `compare --workloads lock_handoff,queue_mpmc
//! --sizes 64 --reps 5`, both runs under `chrt -f 50` so that other work on the machine could
//! not interleave, two interleaved rounds: the hand-off round trip was 1.31-1.58 us with the
//! adaptive [`Backoff`] (1.75x the process-shared pthread mutex of the same run) and
//! 0.86-1.03 us without spinning (0.98-1.14x pthread); the 2x2 queue, which locks for short
//! copies, measured alike (12.0-13.1 M msg/s against 12.6-12.9 M). Before the backoff
//! existed, the lock spun a fixed 100 polls (1.43x pthread).
//!
//! Next to the word the owner keeps a record `{tid, pid, start time}` of itself, written after
//! it acquires and cleared (`tid = 0`) before it releases. A waiter trusts the record only if
//! its `tid` equals the word's owner both before and after reading the rest (a seqlock-like
//! read), so a record being rewritten is never mixed up with the owner's.
//!
//! # Owner death
//!
//! A waiter learns of its owner's death from a **death watch** (`death_watch.rs`), with the
//! procfs check below deciding. Its sleeps on an owner are short timed ones (`FIRST_SLICE`,
//! 200 us) until one times out, so hand-offs after short critical sections cost nothing more.
//! Once one times out, it arms a watch on the owner: a pidfd for the owner's thread
//! (Linux 6.9's `PIDFD_THREAD`; before that, for its process), polled by one background thread
//! per process. When the owner exits, that thread sets the word's `OWNER_DIED` hint bit and
//! wakes every sleeper on the word (in every process); each checks the owner at once. Later
//! sleeps are timed only as a fallback (`WATCHED_SLICE`, 250 ms) for what a watch cannot see.
//! An owner the watch cannot watch (no record yet, its thread in the waiter's own process on a
//! kernel without thread pidfds, the service unable to start) is checked after each slice of
//! [`LIVENESS_SLICE`], as before the watch existed; so is everything under loom.
//!
//! The check reads procfs: the owner is dead if its `/proc/<pid>/task/<tid>/stat` is gone, if
//! it is a zombie (a SIGKILLed process stays one until reaped), or if the thread there started
//! at another time than recorded (the tid was reused). A dead owner's lock is taken over by a
//! `compare_exchange` from the exact word the waiter observed, so only one waiter takes it and
//! a live new owner is never robbed. A watch only wakes, never decides: a hint on a word whose
//! owner is alive (its id reused) costs each waiter one check. The taker gets
//! [`LockError::OwnerDied`] carrying the guard, as pthread's robust mutexes give `EOWNERDEAD`.
//! It repairs the protected data and calls [`LockGuard::mark_consistent`]; if it drops the
//! guard without doing so, the lock becomes *not recoverable*: every later attempt fails with
//! `NotRecoverable` (`ENOTRECOVERABLE`).
//!
//! Why not the kernel's robust futex list (`set_robust_list`), which marks `FUTEX_OWNER_DIED`
//! itself? glibc owns each thread's list head, and the list is linked through pointers stored
//! in the locks, that is in shared memory another process may scribble; the kernel and glibc
//! would follow them. A pidfd is this process's own descriptor: nothing read from shared
//! memory is ever followed.
//!
//! A thread that exits while holding the lock counts as dead too (its process may live on).
//! If the owner died in the few instructions between taking the word and writing its record,
//! the waiter checks the thread id alone (a reused id would then look alive: this window is a
//! handful of instructions wide). A word that names a live thread which never writes a record
//! (for about a second of waiting) can only come from a corrupted or hostile segment: it is
//! treated as a dead owner's, so corruption gives an `OwnerDied` recovery, not a hang. Kernel
//! threads never count as owners.
//!
//! [`Lock::try_lock`] checks the owner's liveness too when the lock is held, so a polling loop
//! also recovers a dead owner's lock. That check reads a procfs file (a few microseconds), so a
//! failed `try_lock` costs that much more than a successful one.
//!
//! # State table
//!
//! | word | state | meaning |
//! |---|---|---|
//! | `0` | `CONSISTENT` | unlocked (all-zero memory is this state) |
//! | `tid` | `CONSISTENT` | held by thread `tid`, nobody sleeps |
//! | `tid \| WAITERS` | `CONSISTENT` | held, somebody may sleep: unlock wakes one |
//! | `tid \| OWNER_DIED [\| WAITERS]` | any | a death watch saw `tid` exit: each waiter checks it once |
//! | `tid [\| WAITERS]` | `INCONSISTENT` | held by `tid`, which took it over from a dead owner and has not yet called `mark_consistent` |
//! | any | `NOT_RECOVERABLE` | a taker dropped its guard without `mark_consistent`: every lock attempt fails |
//!
//! Transitions: `0 -> tid` (lock), `tid -> tid|WAITERS` (a waiter before sleeping),
//! `0 -> tid|WAITERS` (acquire after sleeping), `x -> 0` (unlock), `dead|.. -> tid|WAITERS`
//! (takeover, with `state -> INCONSISTENT`), `tid.. -> tid..|OWNER_DIED` (a death watch, then
//! wake all), `INCONSISTENT -> CONSISTENT` (mark_consistent),
//! `INCONSISTENT -> NOT_RECOVERABLE` (guard dropped unrepaired; then unlock and wake everybody).
//!
//! ## Memory ordering
//!
//! Acquiring CASes are `Acquire` and the unlocking swap is `Release`: the critical sections are
//! ordered by the word alone. The record fields are written with `Release` and read with
//! `Acquire`: a waiter that reads a new owner's record field also sees the previous owner's
//! `tid = 0` (which happened before the unlock, hence before the new owner's acquisition), so
//! its second read of `tid` cannot return the previous owner's id for a mixed record. `state`
//! is written by the lock holder only and read under the lock, except `NOT_RECOVERABLE`, which
//! is stored `Release` before the unlocking swap and re-read by every waiter after each wake.
//! Lost wake-ups are excluded by the futex: a waiter sleeps only if the word still holds the
//! `WAITERS` value it saw, and an unlock changes the word before it wakes. The same holds for a
//! death watch's report: it sets `OWNER_DIED` (changing the word) before it wakes, with
//! `Release`, and a waiter that sees the hint re-reads the word with `Acquire` before its check,
//! so the check happens after the death the watcher saw.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::death_watch::{Slept, Watch};
use crate::futex::{Deadline, WaitOutcome};
use crate::owner::{Env, Me, OwnerRecord, Sys};
use crate::sync::{AtomicU32, AtomicU64, Ordering, spin_hint};
use crate::waiter::{Futex, Waiter};

/// How long a waiter sleeps before it checks whether the owner is still alive, when the death
/// watch cannot watch that owner (see [`Lock`]'s "Owner death" docs): then this bounds how long
/// a dead owner goes unnoticed (plus one procfs read per slice, only while waiting).
pub const LIVENESS_SLICE: Duration = Duration::from_millis(20);

/// How many lock owners this process's death watch has seen exit while a waiter of this
/// process watched them (see [`Lock`]'s "Owner death" docs); each such exit woke that lock's
/// sleepers at once, in every process. A diagnostic: a waiter whose owner was watched learns of
/// its death within microseconds; one whose owner could not be watched learns of it at the end
/// of a [`LIVENESS_SLICE`], and is not counted here.
///
/// ```
/// // Nothing has been watched in this process yet.
/// assert_eq!(ipc_sync::lock::owner_exits_seen(), 0);
/// ```
pub fn owner_exits_seen() -> u64 {
    crate::death_watch::exits_seen()
}

/// A waiter's sleeps on an owner until one of them times out: short, so that hand-offs after
/// short critical sections never pay for arming a death watch; a sleep that outlasts it arms one.
#[cfg(not(loom))]
const FIRST_SLICE: Duration = Duration::from_micros(200);
/// Under loom the model's time steps end timed sleeps, but a deadline that passes on the real
/// clock during a model run ends one at once: a slice this short would make runs
/// non-deterministic.
#[cfg(loom)]
const FIRST_SLICE: Duration = LIVENESS_SLICE;

/// The slice of a watched sleep: the fallback for deaths the watch cannot see (a thread that
/// exits alone, on kernels without thread pidfds) and for a watch opened on a reused id.
const WATCHED_SLICE: Duration = Duration::from_millis(250);

/// Consecutive liveness slices after which a lock word naming a live thread that never wrote
/// its owner record is taken for garbage (see [`Lock`]'s "Owner death" docs).
const UNRECORDED_SLICES: u32 = 50;

pub(crate) const WAITERS: u32 = 1 << 31;
/// A death watch saw the owner exit: waiters check it at once (a hint, as the kernel's
/// `FUTEX_OWNER_DIED` bit of robust futexes, at the same position).
pub(crate) const OWNER_DIED: u32 = 1 << 30;
pub(crate) const TID_MASK: u32 = (1 << 30) - 1;

const CONSISTENT: u32 = 0;
const INCONSISTENT: u32 = 1;
const NOT_RECOVERABLE: u32 = 2;

/// The spin policy of every lock in this process: none (see the module docs, "Why the lock
/// does not spin").
static BACKOFF: Backoff = Backoff::never();

/// A mutual-exclusion lock that lives in shared memory, robust to the death of its owner.
///
/// Python's `multiprocessing.Lock`, plus pthread's robust-mutex semantics: if the holder dies
/// (its process is killed, or its thread exits), the next acquirer gets
/// [`LockError::OwnerDied`] with the guard, repairs what the lock protects, and calls
/// [`LockGuard::mark_consistent`]. See the [module docs](self) for the algorithm.
///
/// All-zero bytes are an unlocked lock, so a lock in a fresh (zero-filled) segment needs no
/// initialisation; [`Lock::new`] makes one on the heap or on the stack.
///
/// A guard belongs to the thread that locked (it is `!Send`): the lock records the owning
/// thread to detect its death.
///
/// ```
/// use ipc_sync::Lock;
///
/// let lock = Lock::new();
/// {
///     let _guard = lock.lock().expect("nobody died holding it");
///     assert!(lock.is_locked());
///     assert!(lock.try_lock().is_err());
/// }
/// assert!(!lock.is_locked());
/// ```
#[repr(C)]
pub struct Lock {
    /// The futex word: owner tid | WAITERS.
    word: AtomicU32,
    /// CONSISTENT / INCONSISTENT / NOT_RECOVERABLE.
    state: AtomicU32,
    /// The owner record: tid (0 while being rewritten or unlocked), pid, start time.
    owner_tid: AtomicU32,
    owner_pid: AtomicU32,
    owner_start: AtomicU64,
}

impl Default for Lock {
    fn default() -> Self {
        Lock::new()
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.word.load(Ordering::Relaxed);
        f.debug_struct("Lock")
            .field("owner_tid", &(w & TID_MASK))
            .field("waiters", &(w & WAITERS != 0))
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why [`Lock::lock`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError<G> {
    /// The previous owner died holding the lock. You now hold it (the guard is inside): repair
    /// the protected state and call `mark_consistent`, or the lock becomes not recoverable.
    #[error("the previous owner of the lock died while holding it")]
    OwnerDied(G),
    /// An earlier taker of a dead owner's lock released it without marking it consistent.
    #[error("the lock is not recoverable: its owner died and nobody repaired it")]
    NotRecoverable,
}

/// Why [`Lock::try_lock`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryLockError<G> {
    /// Another live thread holds the lock.
    #[error("the lock is held")]
    WouldBlock,
    /// See [`LockError::OwnerDied`].
    #[error("the previous owner of the lock died while holding it")]
    OwnerDied(G),
    /// See [`LockError::NotRecoverable`].
    #[error("the lock is not recoverable: its owner died and nobody repaired it")]
    NotRecoverable,
}

/// Why [`Lock::lock_timeout`] or [`Lock::lock_deadline`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockTimeoutError<G> {
    /// The deadline passed while another live thread held the lock.
    #[error("timed out waiting for the lock")]
    Timeout,
    /// See [`LockError::OwnerDied`].
    #[error("the previous owner of the lock died while holding it")]
    OwnerDied(G),
    /// See [`LockError::NotRecoverable`].
    #[error("the lock is not recoverable: its owner died and nobody repaired it")]
    NotRecoverable,
}

/// A lock error without its guard: what [`LockError`], [`TryLockError`] and
/// [`LockTimeoutError`] become to leave the function that took the lock.
///
/// Those errors may hold the guard (`OwnerDied`: you hold the lock), which borrows the lock, so
/// they are not `'static` and `?` cannot turn them into `Box<dyn Error>` or another owned error.
/// `LockFailure` owns nothing: each of them converts into it with `From` (so `e.into()` and
/// `.map_err(LockFailure::from)?` work), as std's `PoisonError` is reduced to a plain error.
/// Converting drops the guard, which releases the lock; after `OwnerDied` that leaves the lock
/// not recoverable, since nobody repaired what it protects (handle `OwnerDied` first if you
/// can).
///
/// ```
/// use ipc_shm::SharedValue;
/// use ipc_sync::{Lock, LockError, LockFailure};
///
/// fn locked_work(lock: &Lock) -> Result<(), Box<dyn std::error::Error>> {
///     let guard = match lock.lock() {
///         Ok(guard) => guard,
///         Err(LockError::OwnerDied(mut guard)) => {
///             // repair the protected data, then:
///             guard.mark_consistent();
///             guard
///         }
///         Err(e) => return Err(LockFailure::from(e).into()),
///     };
///     drop(guard);
///     let _again = lock.lock().map_err(LockFailure::from)?;
///     Ok(())
/// }
///
/// let lock = SharedValue::<Lock>::new_anonymous()?;
/// locked_work(&lock)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum LockFailure {
    /// The previous owner died holding the lock (the guard was dropped with the error, so the
    /// lock is now not recoverable unless someone marked it consistent).
    #[error("the previous owner of the lock died while holding it")]
    OwnerDied,
    /// See [`LockError::NotRecoverable`].
    #[error("the lock is not recoverable: its owner died and nobody repaired it")]
    NotRecoverable,
    /// See [`TryLockError::WouldBlock`].
    #[error("the lock is held")]
    WouldBlock,
    /// See [`LockTimeoutError::Timeout`].
    #[error("timed out waiting for the lock")]
    Timeout,
}

impl<G> From<LockError<G>> for LockFailure {
    fn from(e: LockError<G>) -> Self {
        match e {
            LockError::OwnerDied(_) => LockFailure::OwnerDied,
            LockError::NotRecoverable => LockFailure::NotRecoverable,
        }
    }
}

impl<G> From<TryLockError<G>> for LockFailure {
    fn from(e: TryLockError<G>) -> Self {
        match e {
            TryLockError::WouldBlock => LockFailure::WouldBlock,
            TryLockError::OwnerDied(_) => LockFailure::OwnerDied,
            TryLockError::NotRecoverable => LockFailure::NotRecoverable,
        }
    }
}

impl<G> From<LockTimeoutError<G>> for LockFailure {
    fn from(e: LockTimeoutError<G>) -> Self {
        match e {
            LockTimeoutError::Timeout => LockFailure::Timeout,
            LockTimeoutError::OwnerDied(_) => LockFailure::OwnerDied,
            LockTimeoutError::NotRecoverable => LockFailure::NotRecoverable,
        }
    }
}

impl<G> LockError<G> {
    /// The guard of an `OwnerDied` error (the caller holds the lock), else `None`.
    pub fn into_guard(self) -> Option<G> {
        match self {
            LockError::OwnerDied(g) => Some(g),
            LockError::NotRecoverable => None,
        }
    }
}

impl<G> TryLockError<G> {
    /// The guard of an `OwnerDied` error (the caller holds the lock), else `None`.
    pub fn into_guard(self) -> Option<G> {
        match self {
            TryLockError::OwnerDied(g) => Some(g),
            _ => None,
        }
    }
}

impl<G> LockTimeoutError<G> {
    /// The guard of an `OwnerDied` error (the caller holds the lock), else `None`.
    pub fn into_guard(self) -> Option<G> {
        match self {
            LockTimeoutError::OwnerDied(g) => Some(g),
            _ => None,
        }
    }
}

/// Holds a [`Lock`]; unlocks when dropped.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    /// Taken over from a dead owner and not yet marked consistent.
    inconsistent: bool,
    /// `!Send`: the lock records the owning thread.
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("inconsistent", &self.inconsistent)
            .finish_non_exhaustive()
    }
}

/// How a raw acquisition ended (internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Acquired normally.
    Clean,
    /// Acquired, but the protected state may be inconsistent (owner died).
    OwnerDied,
}

/// Why a raw acquisition failed (internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawError {
    WouldBlock,
    Timeout,
    NotRecoverable,
}

/// How long to wait (internal).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// `try_lock`: never sleep.
    No,
    /// Until the deadline, or forever.
    Until(Option<Deadline>),
}

impl Lock {
    /// An unlocked lock (the same as all-zero bytes).
    #[cfg(not(loom))]
    pub const fn new() -> Lock {
        Lock {
            word: AtomicU32::new(0),
            state: AtomicU32::new(CONSISTENT),
            owner_tid: AtomicU32::new(0),
            owner_pid: AtomicU32::new(0),
            owner_start: AtomicU64::new(0),
        }
    }

    /// An unlocked lock (loom's atomics have no `const fn new`).
    #[cfg(loom)]
    pub fn new() -> Lock {
        Lock {
            word: AtomicU32::new(0),
            state: AtomicU32::new(CONSISTENT),
            owner_tid: AtomicU32::new(0),
            owner_pid: AtomicU32::new(0),
            owner_start: AtomicU64::new(0),
        }
    }

    /// Acquires the lock, sleeping while another thread or process holds it.
    ///
    /// Errors: [`LockError::OwnerDied`] if the holder died (you now hold the lock), or
    /// [`LockError::NotRecoverable`].
    #[inline]
    pub fn lock(&self) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
        match self.raw_lock(&Sys, Wait::Until(None)) {
            Ok(Acquired::Clean) => Ok(self.guard(false)),
            Ok(Acquired::OwnerDied) => Err(LockError::OwnerDied(self.guard(true))),
            Err(_) => Err(LockError::NotRecoverable),
        }
    }

    /// Acquires the lock if it is free right now.
    ///
    /// When the lock is held, checks whether its owner is alive (one procfs read, a few
    /// microseconds), so that polling with `try_lock` also recovers a dead owner's lock. An
    /// owner still in the middle of exiting counts as alive (a thread whose `join` has just
    /// returned may be, for a moment): that call says `WouldBlock`, a later one or a blocking
    /// [`lock`](Lock::lock) sees the death.
    #[inline]
    pub fn try_lock(&self) -> Result<LockGuard<'_>, TryLockError<LockGuard<'_>>> {
        match self.raw_lock(&Sys, Wait::No) {
            Ok(Acquired::Clean) => Ok(self.guard(false)),
            Ok(Acquired::OwnerDied) => Err(TryLockError::OwnerDied(self.guard(true))),
            Err(RawError::NotRecoverable) => Err(TryLockError::NotRecoverable),
            Err(_) => Err(TryLockError::WouldBlock),
        }
    }

    /// Acquires the lock, waiting at most `timeout` (never returning earlier on timeout).
    #[inline]
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<LockGuard<'_>, LockTimeoutError<LockGuard<'_>>> {
        self.lock_deadline(Deadline::after(timeout))
    }

    /// Acquires the lock, waiting at most until `deadline`.
    #[inline]
    pub fn lock_deadline(
        &self,
        deadline: Deadline,
    ) -> Result<LockGuard<'_>, LockTimeoutError<LockGuard<'_>>> {
        match self.raw_lock(&Sys, Wait::Until(Some(deadline))) {
            Ok(Acquired::Clean) => Ok(self.guard(false)),
            Ok(Acquired::OwnerDied) => Err(LockTimeoutError::OwnerDied(self.guard(true))),
            Err(RawError::NotRecoverable) => Err(LockTimeoutError::NotRecoverable),
            Err(_) => Err(LockTimeoutError::Timeout),
        }
    }

    /// Whether some thread holds the lock right now (a snapshot).
    pub fn is_locked(&self) -> bool {
        self.word.load(Ordering::Relaxed) & TID_MASK != 0
    }

    /// Whether the lock has become not recoverable (see [`LockError::NotRecoverable`]).
    pub fn is_not_recoverable(&self) -> bool {
        self.state.load(Ordering::Acquire) == NOT_RECOVERABLE
    }

    fn guard(&self, inconsistent: bool) -> LockGuard<'_> {
        LockGuard {
            lock: self,
            inconsistent,
            _not_send: PhantomData,
        }
    }

    /// Whether `me` holds the lock: the word and the record both name it (internal, RLock).
    /// Only `me` itself writes its id there, so a stale read can only answer `false`.
    pub(crate) fn is_held_by(&self, me: Me) -> bool {
        self.word.load(Ordering::Relaxed) & TID_MASK == me.tid
            && self.owner_tid.load(Ordering::Relaxed) == me.tid
            && self.owner_start.load(Ordering::Relaxed) == me.start
            && self.owner_pid.load(Ordering::Relaxed) == me.pid
    }

    /// Whether the holder took the lock over and has not repaired it yet (internal; call
    /// only while holding the lock).
    pub(crate) fn raw_is_inconsistent(&self) -> bool {
        self.state.load(Ordering::Relaxed) == INCONSISTENT
    }

    /// Acquires the lock word (internal; the algorithm under test in loom).
    #[inline]
    pub(crate) fn raw_lock(&self, env: &impl Env, wait: Wait) -> Result<Acquired, RawError> {
        let me = env.me();
        if self
            .word
            .compare_exchange(0, me.tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return self.acquired(me, false);
        }
        self.raw_lock_slow(env, me, wait)
    }

    #[cold]
    fn raw_lock_slow(&self, env: &impl Env, me: Me, wait: Wait) -> Result<Acquired, RawError> {
        // A backoff that never spins learns nothing from sleeps: no clock read for it.
        let started = (!BACKOFF.max().is_zero()).then(std::time::Instant::now);
        let mut slept = false;
        let r = self.lock_loop(env, me, wait, &mut slept);
        if let (true, Some(started)) = (slept, started) {
            BACKOFF.slept(started);
        }
        r
    }

    /// The slow path's loop; sets `slept` once it has slept on the word.
    fn lock_loop(
        &self,
        env: &impl Env,
        me: Me,
        wait: Wait,
        slept: &mut bool,
    ) -> Result<Acquired, RawError> {
        let mut spun = false;
        let mut unrecorded = (0, 0);
        // What this waiter knows of the owner it sleeps on.
        let mut sleeping = Sleeping::new(0);
        // The last word value whose OWNER_DIED hint was checked (checked once each).
        let mut hint_checked = 0;
        loop {
            if self.state.load(Ordering::Acquire) == NOT_RECOVERABLE {
                return Err(RawError::NotRecoverable);
            }
            let w = self.word.load(Ordering::Relaxed);
            if w & TID_MASK == 0 {
                let new = if *slept { me.tid | WAITERS } else { me.tid };
                if self
                    .word
                    .compare_exchange(w, new, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return self.acquired(me, false);
                }
                continue;
            }
            let deadline = match wait {
                Wait::No => {
                    if !self.owner_alive(env, w) && self.take_over(me, w) {
                        return self.acquired(me, true);
                    }
                    return Err(RawError::WouldBlock);
                }
                Wait::Until(d) => d,
            };
            if !spun && w & WAITERS == 0 {
                spun = true;
                // Test-and-test-and-set inside the spin: a holder that unlocks and at once
                // locks again (a hand-off loop) leaves the word free for only a few
                // nanoseconds, so a spin that only watched for "free" and took the lock after
                // it returned lost that race, and then slept: every hand-off paid a futex
                // round trip (1.1 us -> 2-3.4 us per round, twice pthread's).
                if BACKOFF.spin(|| self.try_take_free(me)) {
                    return self.acquired(me, false);
                }
                continue;
            }
            if w & OWNER_DIED != 0 && w != hint_checked {
                // A death watch saw this owner exit: check now, not at the end of a slice. The
                // acquiring re-read pairs with the hint's release, so the check sees the death
                // the watcher saw.
                if self.word.load(Ordering::Acquire) != w {
                    continue;
                }
                hint_checked = w;
                if !self.owner_alive(env, w) && self.take_over(me, w) {
                    return self.acquired(me, true);
                }
                continue;
            }
            if deadline.is_some_and(|d| d.has_passed()) {
                if !self.owner_alive(env, w) && self.take_over(me, w) {
                    return self.acquired(me, true);
                }
                return Err(RawError::Timeout);
            }
            if w & WAITERS == 0
                && self
                    .word
                    .compare_exchange(w, w | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            *slept = true;
            let expected = w | WAITERS;
            if sleeping.owner != w & TID_MASK {
                sleeping = Sleeping::new(w & TID_MASK);
            }
            let outcome = match &sleeping.watch {
                Some(watch) => {
                    let until = Deadline::min_with(deadline, WATCHED_SLICE);
                    match watch.sleep(&self.word, expected, Some(until)) {
                        Slept::Waited(outcome) => outcome,
                        Slept::Fired => {
                            // Used once: a watch whose owner still looks alive afterwards
                            // (a reused id) is dropped, and slices take over.
                            sleeping.watch = None;
                            if !self.owner_alive(env, expected) && self.take_over(me, expected) {
                                return self.acquired(me, true);
                            }
                            continue;
                        }
                    }
                }
                None => {
                    let slice = if sleeping.armed {
                        LIVENESS_SLICE
                    } else {
                        FIRST_SLICE
                    };
                    let until = Deadline::min_with(deadline, slice);
                    Futex.wait(&self.word, expected, Some(until))
                }
            };
            if outcome == WaitOutcome::TimedOut {
                if !sleeping.armed {
                    // The owner held on for a whole short sleep: watch it from now on. The
                    // check below runs after the pidfd was opened: if the owner is alive then,
                    // the pidfd is the owner's (its id was not free to be reused in between).
                    sleeping.armed = true;
                    sleeping.watch = env.watch(self.owner_record(expected));
                }
                if !self.owner_alive_slice(env, expected, &mut unrecorded)
                    && self.take_over(me, expected)
                {
                    return self.acquired(me, true);
                }
                spin_hint();
            }
        }
    }

    /// One poll of the spin: takes the word if it is free (and nobody sleeps on it).
    #[inline]
    fn try_take_free(&self, me: Me) -> bool {
        let w = self.word.load(Ordering::Relaxed);
        w & TID_MASK == 0
            && self
                .word
                .compare_exchange(
                    w,
                    me.tid | (w & WAITERS),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Takes over a dead owner's word, exactly as observed.
    fn take_over(&self, me: Me, observed: u32) -> bool {
        self.word
            .compare_exchange(
                observed,
                me.tid | WAITERS,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Records the new owner and checks the consistency state, once the word is ours.
    #[inline]
    fn acquired(&self, me: Me, took_over: bool) -> Result<Acquired, RawError> {
        self.owner_pid.store(me.pid, Ordering::Release);
        self.owner_start.store(me.start, Ordering::Release);
        self.owner_tid.store(me.tid, Ordering::Release);
        match self.state.load(Ordering::Relaxed) {
            CONSISTENT if !took_over => Ok(Acquired::Clean),
            NOT_RECOVERABLE => {
                self.raw_unlock();
                Err(RawError::NotRecoverable)
            }
            _ => {
                self.state.store(INCONSISTENT, Ordering::Relaxed);
                Ok(Acquired::OwnerDied)
            }
        }
    }

    /// Whether the owner in word `w` still runs (asks `env`, with the record if it matches).
    fn owner_alive(&self, env: &impl Env, w: u32) -> bool {
        self.owner_check(env, w).0
    }

    /// `(alive, recorded)`: whether the owner in word `w` runs, and whether its record names it.
    fn owner_check(&self, env: &impl Env, w: u32) -> (bool, bool) {
        let record = self.owner_record(w);
        (env.alive(record), record.detail.is_some())
    }

    /// The owner named by word `w`, with its record if the record is complete and names it.
    fn owner_record(&self, w: u32) -> OwnerRecord {
        let tid = w & TID_MASK;
        let first = self.owner_tid.load(Ordering::Acquire);
        let pid = self.owner_pid.load(Ordering::Acquire);
        let start = self.owner_start.load(Ordering::Acquire);
        let second = self.owner_tid.load(Ordering::Acquire);
        let detail = (first == tid && second == tid).then_some((pid, start));
        OwnerRecord { tid, detail }
    }

    /// Like [`Lock::owner_alive`], for a waiter that checks once per liveness slice. A real
    /// owner writes its record a few instructions after taking the word; a word that names a
    /// live thread with no record for [`UNRECORDED_SLICES`] consecutive slices (about a second)
    /// is garbage from a corrupted or hostile segment (it may name any thread, `init` even), and
    /// is treated as a dead owner's, so the lock is recovered instead of waited on forever.
    fn owner_alive_slice(&self, env: &impl Env, w: u32, unrecorded: &mut (u32, u32)) -> bool {
        let (alive, recorded) = self.owner_check(env, w);
        if !alive || recorded {
            *unrecorded = (0, 0);
            return alive;
        }
        let tid = w & TID_MASK;
        if unrecorded.0 == tid {
            unrecorded.1 += 1;
        } else {
            *unrecorded = (tid, 1);
        }
        unrecorded.1 < UNRECORDED_SLICES
    }

    /// Releases the word (internal): clear the record, swap 0, wake one if needed.
    #[inline]
    pub(crate) fn raw_unlock(&self) {
        self.owner_tid.store(0, Ordering::Relaxed);
        if self.word.swap(0, Ordering::Release) & WAITERS != 0 {
            Futex.wake(&self.word, 1);
        }
    }

    /// Releases after a taker failed to repair: not recoverable, everybody wakes to see it.
    #[cold]
    pub(crate) fn raw_unlock_unrecoverable(&self) {
        self.state.store(NOT_RECOVERABLE, Ordering::Release);
        self.owner_tid.store(0, Ordering::Relaxed);
        self.word.swap(0, Ordering::Release);
        Futex.wake(&self.word, u32::MAX);
    }

    /// Marks the protected state repaired (internal).
    pub(crate) fn raw_mark_consistent(&self) {
        self.state.store(CONSISTENT, Ordering::Relaxed);
    }
}

/// What a waiter knows of the owner it sleeps on (internal to the slow path).
#[derive(Debug)]
struct Sleeping {
    /// The owner's thread id, as in the word.
    owner: u32,
    /// A sleep on this owner timed out and a watch was tried (until then, sleeps are short).
    armed: bool,
    /// The armed watch, if the owner could be watched.
    watch: Option<Watch>,
}

impl Sleeping {
    fn new(owner: u32) -> Sleeping {
        Sleeping {
            owner,
            armed: false,
            watch: None,
        }
    }
}

/// Sets the `OWNER_DIED` hint on a lock word that still names `tid`, then wakes every sleeper
/// on it, in every process: the death watch's report that thread `tid` has exited. The hint is
/// only a request to check: waiters still ask procfs before taking the lock over, so a stale
/// hint (the id reused by a new owner) costs each waiter one check. Changing the word, not just
/// waking, keeps a waiter that is about to sleep from missing the report: its futex wait
/// expects the word without the hint and returns at once.
// Under loom there is no death-watch thread; only the models call this.
#[cfg_attr(all(loom, not(test)), allow(dead_code))]
pub(crate) fn hint_owner_died(word: &AtomicU32, tid: u32) {
    let mut w = word.load(Ordering::Relaxed);
    while w & TID_MASK == tid && w & OWNER_DIED == 0 {
        match word.compare_exchange_weak(w, w | OWNER_DIED, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(now) => w = now,
        }
    }
    Futex.wake(word, u32::MAX);
}

impl<'a> LockGuard<'a> {
    /// Declares the protected state repaired after [`LockError::OwnerDied`], so the lock stays
    /// usable. Without it, dropping the guard makes the lock not recoverable. A no-op on a
    /// guard from a normal acquisition.
    pub fn mark_consistent(&mut self) {
        if self.inconsistent {
            self.lock.raw_mark_consistent();
            self.inconsistent = false;
        }
    }

    /// Whether this guard came from a dead owner and is not yet marked consistent.
    pub fn is_inconsistent(&self) -> bool {
        self.inconsistent
    }

    /// The lock this guard holds.
    pub fn lock(&self) -> &Lock {
        self.lock
    }

    /// Releases the lock without running the guard's drop logic for `inconsistent` (internal,
    /// for `Condition::wait`): returns whether the guard was inconsistent.
    pub(crate) fn into_raw(self) -> (&'a Lock, bool) {
        let parts = (self.lock, self.inconsistent);
        std::mem::forget(self);
        parts
    }

    /// Rebuilds a guard for a held lock (internal).
    pub(crate) fn from_raw(lock: &Lock, inconsistent: bool) -> LockGuard<'_> {
        lock.guard(inconsistent)
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.inconsistent {
            self.lock.raw_unlock_unrecoverable();
        } else {
            self.lock.raw_unlock();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64 as StdU64;
    use std::time::Instant;

    #[test]
    fn zeroed_is_unlocked_and_layout_is_fixed() {
        assert_eq!(std::mem::size_of::<Lock>(), 24);
        let lock = Lock::new();
        assert!(!lock.is_locked());
        drop(lock.lock().unwrap());
        assert!(!lock.is_locked());
    }

    #[test]
    fn threads_exclude_each_other() {
        let lock = Arc::new(Lock::new());
        let counter = Arc::new(StdU64::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (lock, counter) = (lock.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let _g = lock.lock().unwrap();
                        // A non-atomic read-modify-write: lost updates if exclusion fails.
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), 80_000);
        assert!(!lock.is_locked());
    }

    #[test]
    fn timeout_does_not_return_early() {
        let lock = Arc::new(Lock::new());
        let g = lock.lock().unwrap();
        let l2 = lock.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            let r = l2.lock_timeout(Duration::from_millis(60));
            assert!(matches!(r, Err(LockTimeoutError::Timeout)));
            assert!(start.elapsed() >= Duration::from_millis(60));
            assert!(matches!(l2.try_lock(), Err(TryLockError::WouldBlock)));
        });
        t.join().unwrap();
        drop(g);
        assert!(lock.lock_timeout(Duration::ZERO).is_ok());
    }

    #[test]
    fn thread_exit_while_holding_gives_owner_died_then_not_recoverable() {
        let lock = Arc::new(Lock::new());
        let l2 = lock.clone();
        std::thread::spawn(move || std::mem::forget(l2.lock().unwrap()))
            .join()
            .unwrap();
        assert!(lock.is_locked());
        // Blocking lock notices within a slice.
        let guard = match lock.lock() {
            Err(LockError::OwnerDied(g)) => g,
            other => panic!("expected OwnerDied, got {other:?}"),
        };
        assert!(guard.is_inconsistent());
        drop(guard); // not repaired
        assert!(lock.is_not_recoverable());
        assert!(matches!(lock.lock(), Err(LockError::NotRecoverable)));
        assert!(matches!(lock.try_lock(), Err(TryLockError::NotRecoverable)));
    }

    /// Issue 11: `Err(e) => return Err(e.into())` must compile into `Box<dyn Error>`, through
    /// the guard-free `LockFailure`, and keep what went wrong.
    #[test]
    fn lock_errors_convert_into_an_owned_error() {
        fn take(lock: &Lock) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let _g = match lock.lock() {
                Ok(g) => g,
                Err(e) => return Err(LockFailure::from(e).into()),
            };
            Ok(())
        }
        let lock = Arc::new(Lock::new());
        let l2 = lock.clone();
        std::thread::spawn(move || std::mem::forget(l2.lock().unwrap()))
            .join()
            .unwrap();
        // OwnerDied: converting drops the guard unrepaired.
        let e = take(&lock).unwrap_err();
        assert_eq!(
            e.downcast_ref::<LockFailure>(),
            Some(&LockFailure::OwnerDied)
        );
        let e = take(&lock).unwrap_err();
        assert_eq!(
            e.downcast_ref::<LockFailure>(),
            Some(&LockFailure::NotRecoverable)
        );
        let failure: LockFailure = lock.try_lock().unwrap_err().into();
        assert_eq!(failure, LockFailure::NotRecoverable);
        let failure: LockFailure = lock.lock_timeout(Duration::ZERO).unwrap_err().into();
        assert_eq!(failure, LockFailure::NotRecoverable);

        let held = Lock::new();
        let _g = held.lock().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let f: LockFailure = held.try_lock().unwrap_err().into();
                assert_eq!(f, LockFailure::WouldBlock);
                let f: LockFailure = held.lock_timeout(Duration::ZERO).unwrap_err().into();
                assert_eq!(f, LockFailure::Timeout);
                assert_eq!(f.to_string(), "timed out waiting for the lock");
            });
        });
    }

    #[test]
    fn repaired_lock_stays_usable() {
        let lock = Arc::new(Lock::new());
        let l2 = lock.clone();
        std::thread::spawn(move || std::mem::forget(l2.lock().unwrap()))
            .join()
            .unwrap();
        // The blocking lock, not `try_lock`: `join` returns once the thread's exit cleared its
        // id word, a moment before procfs stops listing it as running, and `try_lock` in that
        // moment rightly answers `WouldBlock` (it failed so in CI); `lock` waits for the death.
        let mut guard = lock.lock().unwrap_err().into_guard().unwrap();
        guard.mark_consistent();
        drop(guard);
        assert!(!lock.is_locked());
        assert!(lock.lock().is_ok());
    }

    #[test]
    fn waiter_sleeping_on_a_dying_owner_takes_over() {
        let lock = Arc::new(Lock::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = lock.clone();
        let owner = std::thread::spawn(move || {
            let g = l2.lock().unwrap();
            tx.send(()).unwrap();
            // Not synchronisation: makes it likely (not required) that the waiter sleeps first.
            std::thread::sleep(Duration::from_millis(50));
            std::mem::forget(g);
        });
        rx.recv().unwrap();
        let r = lock.lock_timeout(Duration::from_secs(20));
        assert!(matches!(r, Err(LockTimeoutError::OwnerDied(_))), "{r:?}");
        owner.join().unwrap();
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::owner::model::TestEnv;
    use loom::sync::Arc;

    /// Two threads (tids 2 and 3) that each take `lock`, repair it if they got `OwnerDied`,
    /// and unlock; each answers whether it was the one that saw `OwnerDied`.
    fn spawn_acquirers(
        lock: &Arc<Lock>,
        dead: &Arc<AtomicU32>,
    ) -> Vec<loom::thread::JoinHandle<bool>> {
        (2..=3)
            .map(|tid| {
                let (lock, env) = (lock.clone(), TestEnv::new(tid, dead));
                loom::thread::spawn(move || {
                    let r = lock.raw_lock(&env, Wait::Until(None));
                    let died = r == Ok(Acquired::OwnerDied);
                    assert!(r.is_ok());
                    if died {
                        lock.raw_mark_consistent();
                    }
                    lock.raw_unlock();
                    died
                })
            })
            .collect()
    }

    #[test]
    fn mutual_exclusion() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let lock = Arc::new(Lock::new());
            let data = Arc::new(AtomicU32::new(0));
            let dead = Arc::new(AtomicU32::new(0));
            let handles: Vec<_> = (1..=2)
                .map(|tid| {
                    let (lock, data, env) = (lock.clone(), data.clone(), TestEnv::new(tid, &dead));
                    loom::thread::spawn(move || {
                        assert_eq!(lock.raw_lock(&env, Wait::Until(None)), Ok(Acquired::Clean));
                        // A split read-modify-write: loom finds the lost update if both
                        // threads were ever inside at once.
                        let v = data.load(Ordering::Relaxed);
                        data.store(v + 1, Ordering::Relaxed);
                        lock.raw_unlock();
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(data.load(Ordering::Relaxed), 2);
            assert_eq!(lock.word.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn dead_owner_is_taken_over_once() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let lock = Arc::new(Lock::new());
            let dead = Arc::new(AtomicU32::new(0));
            let owner = TestEnv::new(1, &dead);
            assert_eq!(
                lock.raw_lock(&owner, Wait::Until(None)),
                Ok(Acquired::Clean)
            );
            let handles = spawn_acquirers(&lock, &dead);
            owner.die(); // dies holding the lock
            let died: u32 = handles.into_iter().map(|h| h.join().unwrap() as u32).sum();
            assert_eq!(died, 1, "exactly one acquirer sees OwnerDied");
            assert_eq!(lock.state.load(Ordering::Relaxed), CONSISTENT);
        });
    }

    #[test]
    fn unrepaired_takeover_is_not_recoverable() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let lock = Arc::new(Lock::new());
            let dead = Arc::new(AtomicU32::new(0));
            let owner = TestEnv::new(1, &dead);
            lock.raw_lock(&owner, Wait::Until(None)).unwrap();
            owner.die();
            let l2 = lock.clone();
            let env2 = TestEnv::new(2, &dead);
            let settle = |lock: &Lock, r: Result<Acquired, RawError>| match r {
                // The taker does not repair: dropping its guard does this.
                Ok(Acquired::OwnerDied) => {
                    lock.raw_unlock_unrecoverable();
                    1
                }
                Ok(Acquired::Clean) => panic!("a dead owner's lock was acquired cleanly"),
                Err(e) => {
                    assert_eq!(e, RawError::NotRecoverable);
                    0
                }
            };
            let waiter = loom::thread::spawn(move || {
                let r = l2.raw_lock(&env2, Wait::Until(None));
                settle(&l2, r)
            });
            let env3 = TestEnv::new(3, &dead);
            let mine = settle(&lock, lock.raw_lock(&env3, Wait::Until(None)));
            assert_eq!(mine + waiter.join().unwrap(), 1, "exactly one taker");
            assert!(lock.is_not_recoverable());
        });
    }

    /// The death watch's report: the owner dies without time passing (no slice ends), so only
    /// the `OWNER_DIED` hint and its wake can end the sleeps; loom reports a lost one as a
    /// deadlock. Two waiters: exactly one takes the lock over.
    #[test]
    fn owner_died_hint_wakes_sleepers_without_a_slice() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let lock = Arc::new(Lock::new());
            let dead = Arc::new(AtomicU32::new(0));
            let owner = TestEnv::new(1, &dead);
            lock.raw_lock(&owner, Wait::Until(None)).unwrap();
            let handles = spawn_acquirers(&lock, &dead);
            owner.die_unseen();
            // What the death-watch thread does when the owner's pidfd fires.
            hint_owner_died(&lock.word, owner.tid);
            let died: u32 = handles.into_iter().map(|h| h.join().unwrap() as u32).sum();
            assert_eq!(died, 1, "exactly one acquirer sees OwnerDied");
            assert_eq!(lock.word.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn timeout_with_live_owner() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let lock = Arc::new(Lock::new());
            let dead = Arc::new(AtomicU32::new(0));
            let owner = TestEnv::new(1, &dead);
            lock.raw_lock(&owner, Wait::Until(None)).unwrap();
            let l2 = lock.clone();
            let env2 = TestEnv::new(2, &dead);
            let t =
                loom::thread::spawn(move || l2.raw_lock(&env2, Wait::Until(Some(Deadline::now()))));
            let r = t.join().unwrap();
            assert_eq!(r, Err(RawError::Timeout));
            lock.raw_unlock();
        });
    }
}
