//! The floor: the cheapest possible cross-process primitives, measured in the same run as ours.
//!
//! - [`futex_ping_pong`]: a round trip between two processes that both sleep in `FUTEX_WAIT`
//!   on one shared word and wake each other with `FUTEX_WAKE` (no spinning). Blocking
//!   primitives (an `Event` ping-pong, a pipe with sleeping peers) are compared against it.
//! - [`spin_ping_pong`]: the same round trip with both processes spinning (with `PAUSE`) on one
//!   shared cache line: the fastest a cross-process round trip can be (hot peers are compared
//!   against it).
//! - [`spin_ping_pong_two_lines`]: the spinning round trip with one word per direction, each on
//!   its own cache line: the least any duplex channel with memory per direction can cost.
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

/// [`spin_ping_pong`] with one word per direction, each on a cache line of its own: the
/// initiator writes round `n` to `ping` and waits for it on `pong`; the responder waits for it
/// on `ping` and writes it to `pong` (both words zero initially). This is the least a duplex
/// channel costs when each direction has its own memory, as every pipe and queue does (the
/// one-word floor bounces a single line, which no channel carrying messages both ways can):
/// a round trip moves at least two lines, each twice. The responder returns when the initiator
/// calls [`spin_ping_pong_two_lines_stop`].
pub fn spin_ping_pong_two_lines(ping: &AtomicU32, pong: &AtomicU32, side: Side, rounds: u64) {
    match side {
        Side::Initiator => {
            let mut n = ping.load(Ordering::Relaxed);
            for _ in 0..rounds {
                n = next_round(n);
                ping.store(n, Ordering::Release);
                while pong.load(Ordering::Acquire) != n {
                    std::hint::spin_loop();
                }
            }
        }
        Side::Responder => {
            let mut seen = 0;
            loop {
                let mut n = ping.load(Ordering::Acquire);
                while n == seen {
                    std::hint::spin_loop();
                    n = ping.load(Ordering::Acquire);
                }
                if n == STOP {
                    return;
                }
                pong.store(n, Ordering::Release);
                seen = n;
            }
        }
    }
}

/// The round after `n` for [`spin_ping_pong_two_lines`]: never 0 (the words' start) nor
/// [`STOP`].
fn next_round(n: u32) -> u32 {
    match n.wrapping_add(1) {
        0 => 1,
        STOP => STOP + 1,
        m => m,
    }
}

/// Tells the responder of a [`spin_ping_pong_two_lines`] to return.
pub fn spin_ping_pong_two_lines_stop(ping: &AtomicU32) {
    ping.store(STOP, Ordering::Release);
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
