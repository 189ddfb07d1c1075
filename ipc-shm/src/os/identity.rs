//! Who this process is, cheaply: its id, cached, and the *fork generation*, a counter that a
//! `pthread_atfork` child handler bumps in every forked child.
//!
//! `getpid` is a system call (125 ns measured on the 2-vCPU reference VM) and several hot
//! paths ask for the pid: the queue checks it before every large message, the lock records its
//! owner. A forked child inherits the parent's memory, so any cache of "who am I" would be
//! stale there; the one child handler registered here clears the cached pid and bumps the
//! generation, and every cache in the workspace compares against that (`ipc-sync`'s owner
//! record and death-watch service, [`pid`] itself).
//!
//! # State table (the handler's registration, once per process; a child inherits it)
//!
//! | state | [`fork_tracking`] | [`pid`] |
//! |---|---|---|
//! | unregistered | registers it (the first caller), then `Ready` or `Unavailable` | asks the kernel |
//! | registering (another thread) | `Busy`: do not cache now | asks the kernel |
//! | registered | `Ready` | cached until the next fork |
//! | registration failed (`ENOMEM`) | `Unavailable`: compare pids, never trust the generation | asks the kernel |
//!
//! The registration never waits: with a blocking `Once`, a child forked while another thread
//! of its parent was registering would inherit a `Once` that is "running" forever, and hang.
//!
//! ## Memory ordering
//!
//! The cached pid and the generation are `Relaxed`: each is written by this process for itself
//! (a value computed by the thread that stores it, or the child handler, which runs in the
//! child before any other code of it) and read back by the same process; no other memory is
//! published through them. The registration state is `Acquire`/`Release`, so a thread that sees
//! `Registered` also sees the handler in place.
//!
//! # Limits
//!
//! Only `fork(3)` (glibc's, and so `std`'s, `nix`'s and this layer's) runs the child handler.
//! A child made with a raw `clone(2)` system call that does not exec would keep its parent's
//! cached pid; such children cannot use the workspace's primitives safely anyway (glibc's own
//! state is not reset for them either).
#![allow(unsafe_code)] // `at_fork_in_child` is an `unsafe fn` (the handler's contract).

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// Bumped in every forked child (by the child handler).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// This process's id once known; 0 before, and again in a forked child (the child handler).
static PID: AtomicU32 = AtomicU32::new(0);

const UNREGISTERED: u8 = 0;
const REGISTERING: u8 = 1;
const REGISTERED: u8 = 2;
const FAILED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNREGISTERED);

extern "C" fn in_child_after_fork() {
    // Async-signal-safe: two atomic operations, no allocation, no lock.
    PID.store(0, Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Whether caches of this process's identity can rely on [`fork_generation`] now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForkTracking {
    /// The child handler is in place: a cache tagged with the generation is stale exactly
    /// when the generation moved.
    Ready,
    /// Another thread is registering the handler right now (or was, when this process was
    /// forked): answer without caching.
    Busy,
    /// The handler could not be registered: the generation never moves, so a cache must
    /// compare pids instead.
    Unavailable,
}

/// Registers the child handler once per process (the first call) and says whether caches may
/// rely on it. Never waits.
pub fn fork_tracking() -> ForkTracking {
    match STATE.load(Ordering::Acquire) {
        REGISTERED => ForkTracking::Ready,
        REGISTERING => ForkTracking::Busy,
        FAILED => ForkTracking::Unavailable,
        _ => register(),
    }
}

#[cold]
fn register() -> ForkTracking {
    if STATE
        .compare_exchange(
            UNREGISTERED,
            REGISTERING,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        // Another thread won the race: ask again (it may be done already).
        return match STATE.load(Ordering::Acquire) {
            REGISTERED => ForkTracking::Ready,
            FAILED => ForkTracking::Unavailable,
            _ => ForkTracking::Busy,
        };
    }
    // SAFETY: `at_fork_in_child` requires an async-signal-safe handler: this one only performs
    // an atomic store and an atomic add (no allocation, no lock). Its error (ENOMEM) is
    // checked: without the handler, nothing is cached and callers compare pids.
    let registered = unsafe { super::at_fork_in_child(in_child_after_fork) };
    let (state, tracking) = match registered {
        Ok(()) => (REGISTERED, ForkTracking::Ready),
        Err(_) => (FAILED, ForkTracking::Unavailable),
    };
    STATE.store(state, Ordering::Release);
    tracking
}

/// The fork generation: how many forks separate this process from the first one that
/// registered the handler (0 there; every forked child adds one). Compare it with the value a
/// cache was filled under; meaningful only while [`fork_tracking`] is `Ready`.
#[inline]
pub fn fork_generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// This process's id: the kernel's answer, cached until the next fork once the child handler
/// is in place (see the module docs), so that hot paths make no system call for it.
#[inline]
pub fn pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => pid_slow(),
        pid => pid,
    }
}

#[cold]
fn pid_slow() -> u32 {
    let pid = rustix::process::getpid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs();
    // Cached only with the handler in place, which clears it in a forked child. A fork between
    // the `getpid` above and this store leaves the child with the parent's snapshot, taken
    // before the store, and the handler clears it there anyway.
    if fork_tracking() == ForkTracking::Ready {
        PID.store(pid, Ordering::Relaxed);
    }
    pid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_pid_is_the_kernels_and_a_forked_child_gets_its_own() {
        let kernel = rustix::process::getpid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs();
        assert_eq!(pid(), kernel);
        assert_eq!(fork_tracking(), ForkTracking::Ready);
        assert_eq!(pid(), kernel, "cached");
        let generation = fork_generation();
        let child = super::super::fork_then(&[], || {
            let own = rustix::process::getpid()
                .as_raw_nonzero()
                .get()
                .unsigned_abs();
            // The child's answers: its own pid (not the parent's cached one), a new generation.
            i32::from(pid() != own || own == kernel || fork_generation() != generation + 1)
        })
        .expect("fork");
        assert_eq!(
            super::super::reap(child).expect("reap"),
            super::super::ExitStatus::Code(0)
        );
        assert_eq!(
            fork_generation(),
            generation,
            "the parent's generation stays"
        );
    }
}
