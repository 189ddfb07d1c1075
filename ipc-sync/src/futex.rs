//! The workspace's one futex wrapper: shared (never private) futex wait and wake.
//!
//! Every crate of the workspace that sleeps on shared memory (the primitives here, the queue,
//! the pipe, the pool) goes through [`wait`] and [`wake`], so the rules live in one place:
//!
//! - **Shared futexes only.** `FUTEX_PRIVATE_FLAG` is never set: a private futex is keyed by the
//!   address in *this* process's address space and would never meet a waiter in another process.
//! - **Absolute monotonic deadlines.** A timed wait uses `FUTEX_WAIT_BITSET`, whose timeout is an
//!   absolute `CLOCK_MONOTONIC` time ([`Deadline`]). A wait interrupted by a signal and retried
//!   keeps the same deadline, so retries never stretch a timeout, and the kernel never returns
//!   `ETIMEDOUT` before the deadline, so timeouts never end early.
//! - **Many words, one sleeper.** [`wait_any`] (`futex_waitv`, Linux >= 5.16) sleeps on up to
//!   [`WAIT_ANY_MAX`] words at once under the same two rules: the async reactor of
//!   `ipc-queue` sleeps there for every task that awaits an event count.
//! - **Outcomes, not errors.** `EAGAIN` (the word no longer held the expected value), `EINTR` (a
//!   signal) and `ETIMEDOUT` are ordinary results ([`WaitOutcome`]); callers re-check their
//!   condition and loop.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use ipc_sync::futex::{self, Deadline, WaitOutcome};
//!
//! let word = AtomicU32::new(0);
//! // The word is not 1, so the kernel refuses to sleep.
//! assert_eq!(futex::wait(&word, 1, None), WaitOutcome::Mismatch);
//! // Nobody wakes us: the wait ends at the deadline, never before it.
//! let deadline = Deadline::after(Duration::from_millis(5));
//! assert_eq!(futex::wait(&word, 0, Some(deadline)), WaitOutcome::TimedOut);
//! assert!(deadline.has_passed());
//! word.store(1, Ordering::Release);
//! assert_eq!(futex::wake(&word, u32::MAX), 0); // nobody was waiting
//! ```

use std::num::NonZeroU32;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex as sys;
use rustix::time::{ClockId, Timespec};

/// How a [`wait`] ended. Every outcome means "re-check the condition".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Woken by a [`wake`] (or spuriously: the kernel allows it).
    Woken,
    /// The word did not hold the expected value when the wait began (`EAGAIN`).
    Mismatch,
    /// A signal arrived (`EINTR`).
    Interrupted,
    /// The deadline passed (`ETIMEDOUT`).
    TimedOut,
}

/// An absolute point on the `CLOCK_MONOTONIC` clock, shared by all processes on the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    ts: Timespec,
}

const NANOS: i64 = 1_000_000_000;

#[cfg(not(loom))]
fn monotonic_now() -> Timespec {
    rustix::time::clock_gettime(ClockId::Monotonic)
}

/// Under loom the clock stands still: whether a deadline has passed must not depend on how long
/// the checker took to reach a point (a slow run on a loaded machine would take another branch,
/// which loom reports as "unexpected exploration state"). A deadline has passed only if it was
/// zero to begin with; time passing is modelled by the futex model instead
/// ([`crate::waiter::loom_time_passes`], timeouts that fire).
#[cfg(loom)]
fn monotonic_now() -> Timespec {
    Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    }
}

impl Deadline {
    /// The deadline `timeout` from now (saturating far in the future).
    pub fn after(timeout: Duration) -> Deadline {
        let now = monotonic_now();
        let secs = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX / 2);
        let mut tv_sec = now.tv_sec.saturating_add(secs);
        let mut tv_nsec = now.tv_nsec + i64::from(timeout.subsec_nanos());
        if tv_nsec >= NANOS {
            tv_nsec -= NANOS;
            tv_sec = tv_sec.saturating_add(1);
        }
        Deadline {
            ts: Timespec { tv_sec, tv_nsec },
        }
    }

    /// The current time, as a deadline that has just passed.
    pub fn now() -> Deadline {
        Deadline {
            ts: monotonic_now(),
        }
    }

    /// Whether the deadline has passed.
    pub fn has_passed(&self) -> bool {
        self.remaining().is_zero()
    }

    /// The time left until the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        let now = monotonic_now();
        let secs = self.ts.tv_sec.saturating_sub(now.tv_sec);
        let nanos = self.ts.tv_nsec - now.tv_nsec;
        let total = i128::from(secs) * i128::from(NANOS) + i128::from(nanos);
        if total <= 0 {
            Duration::ZERO
        } else {
            let total = u128::try_from(total).unwrap_or(0);
            Duration::new(
                (total / NANOS as u128) as u64,
                (total % NANOS as u128) as u32,
            )
        }
    }

    /// The earlier of two deadlines.
    pub fn min(self, other: Deadline) -> Deadline {
        if (self.ts.tv_sec, self.ts.tv_nsec) <= (other.ts.tv_sec, other.ts.tv_nsec) {
            self
        } else {
            other
        }
    }

    /// The earlier of `deadline` (if any) and `timeout` from now.
    pub fn min_with(deadline: Option<Deadline>, timeout: Duration) -> Deadline {
        let slice = Deadline::after(timeout);
        deadline.map_or(slice, |d| d.min(slice))
    }
}

/// Sleeps while `word` holds `expected`, until woken or `deadline` passes.
///
/// Returns at once with [`WaitOutcome::Mismatch`] if the word holds another value: the kernel
/// compares and sleeps atomically with respect to [`wake`], so a wake-up that follows a change
/// of the word is never lost. The wait may also end spuriously; callers always loop.
#[inline]
pub fn wait(word: &AtomicU32, expected: u32, deadline: Option<Deadline>) -> WaitOutcome {
    // FUTEX_WAIT_BITSET with all bits set behaves as FUTEX_WAIT but takes an absolute
    // CLOCK_MONOTONIC timeout. Flags are empty: a shared futex.
    let r = sys::wait_bitset(
        word,
        sys::Flags::empty(),
        expected,
        deadline.as_ref().map(|d| &d.ts),
        NonZeroU32::MAX,
    );
    match r {
        Ok(()) => WaitOutcome::Woken,
        Err(Errno::AGAIN) => WaitOutcome::Mismatch,
        Err(Errno::INTR) => WaitOutcome::Interrupted,
        Err(Errno::TIMEDOUT) => WaitOutcome::TimedOut,
        // EFAULT/EINVAL/ENOSYS cannot happen for a valid, aligned &AtomicU32 on Linux >= 2.6.25;
        // treat anything else as a spurious wake-up so callers re-check rather than hang.
        Err(_) => WaitOutcome::Woken,
    }
}

/// The most words one [`wait_any`] sleeps on (the kernel's `FUTEX_WAITV_MAX`).
pub const WAIT_ANY_MAX: usize = 128;

/// How a [`wait_any`] ended. Every outcome means "re-check the conditions".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitAnyOutcome {
    /// Woken by a [`wake`] on `words[i]` (or spuriously).
    Woken(usize),
    /// One of the words did not hold its expected value when the wait began (`EAGAIN`).
    Mismatch,
    /// A signal arrived (`EINTR`).
    Interrupted,
    /// The deadline passed (`ETIMEDOUT`).
    TimedOut,
    /// The kernel has no `futex_waitv` (Linux before 5.16, or a seccomp filter refused it), or
    /// refused the arguments (more than [`WAIT_ANY_MAX`] words): nothing slept. Fall back to
    /// [`wait`] in slices.
    Unsupported,
}

/// Sleeps while every `(word, expected)` pair of `words` holds, until a [`wake`] on any of the
/// words or `deadline`: `futex_waitv(2)` (Linux >= 5.16), for one thread that waits for many
/// words at once (an async reactor sleeping for every task that awaits some event count).
///
/// The same rules as [`wait`]: shared futexes only (each entry is `FUTEX2_SIZE_U32` without
/// `FUTEX2_PRIVATE`, so a wake from another process that maps the word meets it), an absolute
/// `CLOCK_MONOTONIC` deadline, and outcomes instead of errors. The kernel compares every word
/// and queues the sleeper on all of them atomically with respect to [`wake`], so a wake-up that
/// follows a change of any word is never lost. At most [`WAIT_ANY_MAX`] words.
///
/// ```
/// use std::sync::atomic::AtomicU32;
/// use std::time::Duration;
/// use ipc_sync::futex::{self, Deadline, WaitAnyOutcome};
///
/// let (a, b) = (AtomicU32::new(0), AtomicU32::new(7));
/// // `b` is not 8: the kernel refuses to sleep.
/// assert_eq!(futex::wait_any(&[(&a, 0), (&b, 8)], None), WaitAnyOutcome::Mismatch);
/// let r = futex::wait_any(&[(&a, 0), (&b, 7)], Some(Deadline::after(Duration::from_millis(2))));
/// assert_eq!(r, WaitAnyOutcome::TimedOut);
/// ```
pub fn wait_any(words: &[(&AtomicU32, u32)], deadline: Option<Deadline>) -> WaitAnyOutcome {
    if words.is_empty() || words.len() > WAIT_ANY_MAX {
        return WaitAnyOutcome::Unsupported;
    }
    let mut waits = [sys::Wait::new(); WAIT_ANY_MAX];
    for (wait, (word, expected)) in waits.iter_mut().zip(words) {
        wait.val = u64::from(*expected);
        wait.uaddr = sys::WaitPtr::new(word.as_ptr().cast());
        // No FUTEX2_PRIVATE: a shared futex, as everywhere in the workspace.
        wait.flags = sys::WaitFlags::SIZE_U32;
    }
    let r = sys::waitv(
        &waits[..words.len()],
        sys::WaitvFlags::empty(),
        deadline.as_ref().map(|d| &d.ts),
        ClockId::Monotonic,
    );
    match r {
        Ok(i) => WaitAnyOutcome::Woken(i),
        Err(Errno::AGAIN) => WaitAnyOutcome::Mismatch,
        Err(Errno::INTR) => WaitAnyOutcome::Interrupted,
        Err(Errno::TIMEDOUT) => WaitAnyOutcome::TimedOut,
        Err(_) => WaitAnyOutcome::Unsupported,
    }
}

/// Wakes up to `n` processes or threads sleeping in [`wait`] on `word`; returns how many woke.
///
/// A wake costs a system call (~70 ns even with nobody waiting): callers track whether anybody
/// waits and skip it otherwise.
#[inline]
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32);
    sys::wake(word, sys::Flags::empty(), n).unwrap_or(0)
}

/// Wakes every waiter on `word`.
#[inline]
pub fn wake_all(word: &AtomicU32) -> usize {
    wake(word, u32::MAX)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// `wait_any` is a shared futex wait: a wake from another process (a forked child, on a
    /// shared mapping) reaches it, and it reports which word woke it. With a private futex the
    /// child's wakes would never arrive and the wait would time out.
    #[test]
    fn wait_any_is_woken_from_another_process_and_names_the_word() {
        let seg = ipc_shm::SegmentBuilder::new(64).create().unwrap();
        let words = seg
            .get(ipc_shm::Offset::<[AtomicU32; 2]>::from_raw(0))
            .unwrap();
        let child = ipc_tests::fork_child(Duration::from_secs(30), || {
            // Wake word 1 until the parent says (through word 0) that a wake arrived.
            while words[0].load(Ordering::Acquire) == 0 {
                wake(&words[1], 1);
                std::hint::spin_loop();
            }
            0
        });
        let deadline = Deadline::after(Duration::from_secs(10));
        let outcome = loop {
            match wait_any(&[(&words[0], 0), (&words[1], 0)], Some(deadline)) {
                WaitAnyOutcome::Interrupted => continue,
                other => break other,
            }
        };
        words[0].store(1, Ordering::Release);
        child.wait().assert_success();
        assert_eq!(outcome, WaitAnyOutcome::Woken(1));
    }

    #[test]
    fn wait_any_refuses_what_the_kernel_cannot_take() {
        let word = AtomicU32::new(0);
        assert_eq!(wait_any(&[], None), WaitAnyOutcome::Unsupported);
        let too_many = vec![(&word, 0); WAIT_ANY_MAX + 1];
        assert_eq!(wait_any(&too_many, None), WaitAnyOutcome::Unsupported);
    }
}
