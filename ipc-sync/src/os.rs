//! The fork generation: a `pthread_atfork` child handler (registered through the workspace's OS
//! layer, [`ipc_shm::os::at_fork_in_child`]) that bumps a counter in every forked child.
//!
//! A forked child's thread has a new thread id, but it inherits the parent's thread-locals, so
//! the cached identity of [`crate::owner`] would be stale. The child handler bumps a generation
//! counter that the cache compares against.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// Bumped in every forked child (by the `pthread_atfork` child handler).
pub(crate) static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Set if the handler could not be registered: then every identity lookup checks the pid.
pub(crate) static ATFORK_MISSING: AtomicBool = AtomicBool::new(false);

extern "C" fn in_child_after_fork() {
    // Async-signal-safe: one atomic add, no allocation, no lock.
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

const UNREGISTERED: u8 = 0;
const REGISTERING: u8 = 1;
const REGISTERED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNREGISTERED);

/// Registers the fork handler once per process (a forked child inherits the registration) and
/// returns whether it is in place.
///
/// It never waits: a thread that finds another one registering returns `false` and goes on
/// without the cache. (With a blocking `Once`, a child forked while another thread of its
/// parent was registering would inherit a `Once` that is "running" forever, and hang.)
pub(crate) fn fork_handler_ready() -> bool {
    match STATE.load(Ordering::Acquire) {
        REGISTERED => true,
        REGISTERING => false,
        _ => {
            if STATE
                .compare_exchange(
                    UNREGISTERED,
                    REGISTERING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                return STATE.load(Ordering::Acquire) == REGISTERED;
            }
            // SAFETY: `at_fork_in_child` requires an async-signal-safe handler: this one only
            // performs an atomic add (no allocation, no lock). Its error (ENOMEM) is checked:
            // without the handler, the identity cache compares pids instead.
            let registered = unsafe { ipc_shm::os::at_fork_in_child(in_child_after_fork) };
            if registered.is_err() {
                ATFORK_MISSING.store(true, Ordering::Relaxed);
            }
            STATE.store(REGISTERED, Ordering::Release);
            true
        }
    }
}
