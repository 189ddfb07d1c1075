//! The floor: the cheapest possible cross-process primitives, measured in the same run as ours.
//!
//! - [`futex_ping_pong`]: a round trip between two processes that both sleep in `FUTEX_WAIT`
//!   on one shared word and wake each other with `FUTEX_WAKE` (no spinning). Blocking
//!   primitives (an `Event` ping-pong, a pipe with sleeping peers) are compared against it.
//! - [`spin_ping_pong`]: the same round trip with both processes spinning (with `PAUSE`) on one
//!   shared cache line: the fastest a cross-process round trip can be (hot peers are compared
//!   against it).
//! - [`memcpy_once`] / [`memcpy_bandwidth`]: copying bytes in one process, the ceiling for any
//!   transport that copies a message in and out of shared memory.
//!
//! The futex floor calls `ipc_sync::futex` (the workspace's bare `FUTEX_WAIT`/`FUTEX_WAKE`
//! wrapper) directly on purpose, not an `Event`, the eventcount or the backoff: it measures the
//! raw system-call round trip that those are compared against. The helper processes come from
//! [`crate::proc`], i.e. from the OS layer `ipc_shm::os`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipc_sync::futex;

/// Which side of a [`futex_ping_pong`] a process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Starts each round trip (writes 1, waits for 0).
    Initiator,
    /// Answers (waits for 1, writes 0) until the initiator writes [`STOP`].
    Responder,
}

/// The word value that tells the responder to return.
pub const STOP: u32 = 2;

/// Runs `rounds` round trips on `word` (all-zero initially) as `side`. The responder ignores
/// `rounds` and returns when the initiator calls [`futex_ping_pong_stop`].
pub fn futex_ping_pong(word: &AtomicU32, side: Side, rounds: u64) {
    match side {
        Side::Initiator => {
            for _ in 0..rounds {
                word.store(1, Ordering::Release);
                futex::wake(word, 1);
                while word.load(Ordering::Acquire) == 1 {
                    futex::wait(word, 1, None);
                }
            }
        }
        Side::Responder => loop {
            let mut w = word.load(Ordering::Acquire);
            while w == 0 {
                futex::wait(word, 0, None);
                w = word.load(Ordering::Acquire);
            }
            if w == STOP {
                return;
            }
            word.store(0, Ordering::Release);
            futex::wake(word, 1);
        },
    }
}

/// Tells the responder of a [`futex_ping_pong`] on `word` to return.
pub fn futex_ping_pong_stop(word: &AtomicU32) {
    word.store(STOP, Ordering::Release);
    futex::wake_all(word);
}

/// Runs `rounds` round trips on `word` (all-zero initially) as `side`, both sides spinning
/// (with `spin_loop()`, `PAUSE` on x86-64) instead of sleeping. The responder returns when the
/// initiator calls [`spin_ping_pong_stop`]. Both processes burn a core while it runs.
pub fn spin_ping_pong(word: &AtomicU32, side: Side, rounds: u64) {
    match side {
        Side::Initiator => {
            for _ in 0..rounds {
                word.store(1, Ordering::Release);
                while word.load(Ordering::Acquire) == 1 {
                    std::hint::spin_loop();
                }
            }
        }
        Side::Responder => loop {
            let mut w = word.load(Ordering::Acquire);
            while w == 0 {
                std::hint::spin_loop();
                w = word.load(Ordering::Acquire);
            }
            if w == STOP {
                return;
            }
            word.store(0, Ordering::Release);
        },
    }
}

/// Tells the responder of a [`spin_ping_pong`] on `word` to return.
pub fn spin_ping_pong_stop(word: &AtomicU32) {
    word.store(STOP, Ordering::Release);
}

/// Copies `src` into `dst` (same length) so that the compiler cannot elide the copy.
#[inline]
pub fn memcpy_once(dst: &mut [u8], src: &[u8]) {
    dst.copy_from_slice(std::hint::black_box(src));
    std::hint::black_box(dst);
}

/// Measured `memcpy` bandwidth in bytes per second for blocks of `len` bytes, copying between
/// two buffers for at least `min_time` (after one warm-up copy).
pub fn memcpy_bandwidth(len: usize, min_time: Duration) -> f64 {
    let src = vec![0x5Au8; len.max(1)];
    let mut dst = vec![0u8; len.max(1)];
    memcpy_once(&mut dst, &src);
    let start = Instant::now();
    let mut copies = 0u64;
    while start.elapsed() < min_time {
        for _ in 0..16 {
            memcpy_once(&mut dst, &src);
        }
        copies += 16;
    }
    (copies as f64 * len as f64) / start.elapsed().as_secs_f64()
}
