//! The shared control block and the single-producer single-consumer byte-ring protocol.
//!
//! One segment holds a [`Control`] block followed by two byte rings, one per direction. Ring
//! `i` is written by end `i` and read by end `1 - i`. Each ring has two monotonic `u64` byte
//! counters, `tail` (bytes ever published by the producer) and `head` (bytes ever consumed by
//! the consumer), on separate cache lines; a byte at counter `p` lives at `p % cap` in the data
//! area. Each side keeps its own counter in private memory (the shared copy is only a
//! publication) and caches the other side's, reloading it only when the cached value says the
//! ring is empty (consumer) or full (producer).
//!
//! Messages are framed as `[FrameHeader][len bytes]`, wrapping freely: the workspace's one frame
//! header (`ipc_shm::codec::FrameHeader`, 8 bytes: `len: u32` little-endian, then `len ^ CHECK`),
//! validated with `ipc_shm::codec::frame_len` against the receiver's maximum before anything is
//! allocated. A stream does not pad frames. A message
//! longer than the free space is streamed: the producer publishes what fits, sleeps until the
//! consumer frees space, and goes on, while the consumer copies out what is published.
//!
//! Every counter read from shared memory is validated against the private one before use
//! (`0 <= tail - head <= cap`, see [`validate_avail`] and [`validate_used`]): a corrupted or
//! hostile peer produces a [`Corruption`] error, never an out-of-bounds access (positions are
//! reduced modulo `cap` by `ipc_shm::ByteRing`, so even a wrong-but-plausible counter only yields wrong
//! bytes, which the framing rejects).
//!
//! # Sleeping and waking (no lost wake-ups, no needless system calls)
//!
//! Each ring has two 32-bit wait words that double as futex words:
//!
//! | word      | set by (bit)                                   | cleared by                     |
//! |-----------|------------------------------------------------|--------------------------------|
//! | `rx_wait` | consumer: `SLEEP` before a futex wait,         | producer: `swap(0)` after it   |
//! |           | `ARMED` when its readiness fd is in use        | published bytes, then it wakes |
//! |           | producer end dropping: `GONE`                  | the futex and/or writes a byte |
//! | `tx_wait` | producer: `SLEEP` before waiting for space,    | consumer: `swap(0)` after it   |
//! |           | `ARMED` when an async sender awaits its fd     | freed space, then futex wake   |
//! |           | consumer end dropping: `GONE`                  | and/or writes a byte           |
//!
//! Consumer waiting for data: `rx_wait.fetch_or(SLEEP)`, re-load `tail`; only if still empty
//! `futex_wait(rx_wait, value_with_SLEEP)`. Producer: publish `tail`, `rx_wait.swap(0)`; only
//! if that returned `SLEEP` a futex wake (and only if `ARMED` a socket byte). The same pattern,
//! mirrored, for the producer waiting for space. A hot consumer that never sleeps leaves
//! `rx_wait == 0`, so the producer makes no system call.
//!
//! ## Memory ordering
//!
//! - Data: the producer copies bytes in, then publishes `tail` with a `Release` store; the
//!   consumer loads `tail` with `Acquire` before copying the bytes out. Symmetrically the
//!   consumer publishes `head` with `Release` after copying out, and the producer loads `head`
//!   with `Acquire` before overwriting the freed bytes.
//! - Wake-ups: both sides touch the wait word with read-modify-writes, which are totally
//!   ordered in that word's modification order and always read its latest value. The waker
//!   stores the counter, then `swap(0, AcqRel)`s the wait word; the sleeper `fetch_or`s its bit
//!   (`AcqRel`), then loads the counter (`Acquire`). Either the waker's swap comes after the
//!   sleeper's `fetch_or` in the word's modification order, so it returns the bit and the waker
//!   wakes; or it comes before, so the sleeper's `fetch_or` reads from it (an acquire RMW reading
//!   a release RMW synchronises with it), the waker's counter store happens-before the
//!   sleeper's load, and the sleeper sees the new counter and does not sleep. No lost wake-up,
//!   with no `SeqCst` and no fence; the loom models in `model.rs` check exactly this code, driven
//!   by the real send and receive paths.
//!   (A `SeqCst` store-then-load version is also correct in C++20 but loom, which models
//!   `SeqCst` accesses as acquire/release, cannot verify it.)
//! - The futex compares the word with the expected value atomically with respect to wakes, so
//!   a `swap(0)` between the sleeper's `fetch_or` and its futex call turns the futex call into
//!   an immediate return.
//! - Cost: the waker's swap is one locked instruction per publication, on a cache line the
//!   waker owns anyway (the wait word shares the line of the counter it publishes), so a hot
//!   peer that never sleeps pays no coherence traffic for it.
//!
//! # States of one ring (as the consumer sees it)
//!
//! | state        | condition                        | consumer does                                |
//! |--------------|----------------------------------|----------------------------------------------|
//! | empty        | `tail == head`                   | spin (adaptive), then sleep as above         |
//! | header part  | `0 < tail - head < 8`            | wait for the rest of the header              |
//! | message      | header complete, `len` validated | copy out what is published, free, repeat     |
//! | partial      | a message larger than the ring   | kept in the end (`End::partial`, header      |
//! |              | stopped at a deadline / `try`    | consumed); the next receive resumes it       |
//! | corrupt      | `tail - head > cap`, bad check   | error; the end is unusable from then on      |
//! | too large    | `len` > `max_message_size`       | `TooLarge`; the end is unusable from then on |
//! | disconnected | empty and peer hung up / closed  | `Disconnected` (after all complete messages) |
//!
//! A message that fits in the ring is consumed only once all of it is published, so a receive
//! that stops at its deadline leaves it in the ring. The timed and non-blocking sends write a
//! frame only once the ring has room for all of it, so they never leave half a frame.
//!
//! `Control::dropped[i]` counts the handles of end `i` dropped anywhere (the drop closes its
//! socket first, then increments with `Release`); the peer's sender loads it (`Acquire`) on every
//! send and, only when it changed, polls its socket once for hang-up.
//!
//! This is the crate's one `unsafe`-allowed module, and only for the two `ShmSafe` impls of the
//! types it defines (the promise that they may live in shared memory); the rings' bytes are
//! copied by `ipc_shm`'s byte ring (`ipc_shm::ShmRing`), whose unsafe lives there.
#![allow(unsafe_code)]

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// `rx_wait`/`tx_wait` bit: the waiter is (about to be) asleep on the futex.
pub(crate) const SLEEP: u32 = 1;
/// `rx_wait` bit: the consumer waits through its readiness fd; the producer writes one byte to
/// the socket after publishing. `tx_wait` bit: an async producer (feature `tokio`) awaits room
/// through its readiness fd; the consumer writes one byte to the socket after freeing space.
pub(crate) const ARMED: u32 = 2;
/// Either word: the other end's handle was dropped in some process; re-check for hang-up.
pub(crate) const GONE: u32 = 4;

/// Magic number of the control block ("ipcpipe1").
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"ipcpipe1");
/// Version of the control block layout and wire format. 2: frames carry the shared
/// `ipc_shm::codec::FrameHeader` (`u32` length + check word) instead of a `u64` length; a
/// version-1 segment is refused (`Corruption` "version", or the segment's type tag).
pub(crate) const VERSION: u64 = 2;
/// Size of a frame header.
pub(crate) const HEADER: usize = ipc_shm::codec::HEADER_LEN;
/// The smallest ring.
pub(crate) const MIN_CAP: usize = 64;

/// One ring's shared counters and wait words, each side on its own cache line pair.
#[repr(C, align(128))]
#[derive(Debug)]
pub(crate) struct RingCtl {
    /// Bytes ever published by the producer (written by the producer only).
    pub(crate) tail: AtomicU64,
    /// The consumer's wait word (see the module docs).
    pub(crate) rx_wait: AtomicU32,
    _pad0: [u8; 128 - 12],
    /// Bytes ever consumed by the consumer (written by the consumer only).
    pub(crate) head: AtomicU64,
    /// The producer's wait word.
    pub(crate) tx_wait: AtomicU32,
    _pad1: [u8; 128 - 12],
}

/// The control block at the start of the segment's payload.
#[repr(C, align(128))]
#[derive(Debug)]
pub(crate) struct Control {
    /// [`MAGIC`], written before the segment is published.
    pub(crate) magic: AtomicU64,
    /// [`VERSION`].
    pub(crate) version: AtomicU64,
    /// Capacity of ring 0 and ring 1 in bytes (powers of two).
    pub(crate) cap: [AtomicU64; 2],
    /// Set to 1 by [`crate::Connection::close`] of end `i`: closed for every process.
    pub(crate) closed: [AtomicU32; 2],
    /// The process currently using end `i` (misuse detection, see `Connection`).
    pub(crate) user_pid: [AtomicU32; 2],
    /// How many handles of end `i` were dropped (in any process): a change tells the peer's
    /// sender to check its socket for hang-up once (`End::peer_dropped`). On the control
    /// block's read-mostly line, so the per-send check costs no coherence traffic. Zero in a
    /// fresh (zero-filled) segment.
    pub(crate) dropped: [AtomicU32; 2],
    /// The CPU end `i` last waited on, as `ipc_sync::cpu_tag` records it (CPU + 1; 0 unknown,
    /// which is what a peer of an older build leaves there): a waiter does not spin for a peer
    /// that last ran on its own CPU (`End::spin_then_sleep`). Written only when it changes, so
    /// it stays on the read-mostly line.
    pub(crate) cpu: [AtomicU32; 2],
    _pad: [u8; 128 - 64],
    /// Ring `i` carries messages from end `i` to end `1 - i`.
    pub(crate) rings: [RingCtl; 2],
}

#[cfg(not(loom))]
// SAFETY: (1) `#[repr(C, align(128))]`; (2) only integers and atomics, no pointers; (3) every
// field is an integer atomic or a byte array, valid for any bit pattern including zero; (4)
// every field another process may change after publication is an atomic (the padding is never
// read); (5) no `Drop`.
unsafe impl ipc_shm::ShmSafe for RingCtl {}
#[cfg(not(loom))]
// SAFETY: as for `RingCtl`: (1) repr(C); (2) no pointers; (3) integer atomics, a `RingCtl`
// array and padding, valid for any bits; (4) mutation only through atomics; (5) no Drop.
unsafe impl ipc_shm::ShmSafe for Control {}

impl RingCtl {
    /// A ring with both counters at zero (for loom models and tests).
    #[cfg(any(test, loom))]
    pub(crate) fn new() -> RingCtl {
        RingCtl {
            tail: AtomicU64::new(0),
            rx_wait: AtomicU32::new(0),
            _pad0: [0; 128 - 12],
            head: AtomicU64::new(0),
            tx_wait: AtomicU32::new(0),
            _pad1: [0; 128 - 12],
        }
    }
}

impl Control {
    /// A control block on the heap as the builder initialises one in shared memory (for the
    /// loom models).
    #[cfg(loom)]
    pub(crate) fn new_model(caps: [usize; 2]) -> Control {
        Control {
            magic: AtomicU64::new(MAGIC),
            version: AtomicU64::new(VERSION),
            cap: caps.map(|c| AtomicU64::new(c as u64)),
            closed: [AtomicU32::new(0), AtomicU32::new(0)],
            user_pid: [AtomicU32::new(0), AtomicU32::new(0)],
            dropped: [AtomicU32::new(0), AtomicU32::new(0)],
            cpu: [AtomicU32::new(0), AtomicU32::new(0)],
            _pad: [0; 128 - 64],
            rings: [RingCtl::new(), RingCtl::new()],
        }
    }
}

/// A value read from shared memory that no correct peer could have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shared memory corrupted: {what} = {value}")]
pub struct Corruption {
    /// Which field.
    pub what: &'static str,
    /// The value found.
    pub value: u64,
}

/// Bytes published and not yet consumed, given the consumer's private `head` and a `tail` read
/// from shared memory: must lie in `0..=cap`.
#[inline]
pub(crate) fn validate_avail(tail: u64, head: u64, cap: usize) -> Result<u64, Corruption> {
    let avail = tail.wrapping_sub(head);
    if avail > cap as u64 {
        return Err(Corruption {
            what: "ring tail",
            value: tail,
        });
    }
    Ok(avail)
}

/// Bytes in use, given the producer's private `tail` and a `head` read from shared memory:
/// must lie in `0..=cap` (the consumer can neither pass the producer nor fall behind by more
/// than the ring).
#[inline]
pub(crate) fn validate_used(tail: u64, head: u64, cap: usize) -> Result<u64, Corruption> {
    let used = tail.wrapping_sub(head);
    if used > cap as u64 {
        return Err(Corruption {
            what: "ring head",
            value: head,
        });
    }
    Ok(used)
}

/// Producer: publishes `tail`; returns the consumer's wait bits that need action (0 when the
/// consumer is awake and not using its fd: the fast path).
#[inline]
pub(crate) fn publish_tail(ring: &RingCtl, tail: u64) -> u32 {
    ring.tail.store(tail, Ordering::Release);
    ring.rx_wait.swap(0, Ordering::AcqRel)
}

/// Producer: publishes `tail` without taking the consumer's wait bits: a sleeping consumer is
/// not woken, and the bits stay set for the next [`publish_tail`], which will wake it.
#[inline]
pub(crate) fn publish_tail_quiet(ring: &RingCtl, tail: u64) {
    ring.tail.store(tail, Ordering::Release);
}

/// Consumer: publishes `head`; returns the producer's wait bits that need action.
#[inline]
pub(crate) fn publish_head(ring: &RingCtl, head: u64) -> u32 {
    ring.head.store(head, Ordering::Release);
    ring.tx_wait.swap(0, Ordering::AcqRel)
}

/// Consumer about to sleep: sets `bits` in `rx_wait` and returns the word's new value (the
/// futex's expected value). The caller must re-load `tail` (with [`load_tail`]) afterwards.
#[inline]
pub(crate) fn arm_rx(ring: &RingCtl, bits: u32) -> u32 {
    ring.rx_wait.fetch_or(bits, Ordering::AcqRel) | bits
}

/// Producer about to sleep for space: sets `SLEEP` in `tx_wait`, returns the expected value.
#[inline]
pub(crate) fn arm_tx(ring: &RingCtl) -> u32 {
    ring.tx_wait.fetch_or(SLEEP, Ordering::AcqRel) | SLEEP
}

/// Loads `tail` after [`arm_rx`] (see "Memory ordering").
#[inline]
pub(crate) fn load_tail(ring: &RingCtl) -> u64 {
    ring.tail.load(Ordering::Acquire)
}

/// Loads `head` after [`arm_tx`].
#[inline]
pub(crate) fn load_head(ring: &RingCtl) -> u64 {
    ring.head.load(Ordering::Acquire)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn layout_is_cache_line_separated() {
        assert_eq!(std::mem::size_of::<RingCtl>(), 256);
        assert_eq!(std::mem::offset_of!(RingCtl, head), 128);
        assert_eq!(std::mem::offset_of!(Control, rings), 128);
    }

    #[test]
    fn validation_rejects_impossible_counters() {
        assert_eq!(validate_avail(10, 10, 64), Ok(0));
        assert_eq!(validate_avail(74, 10, 64), Ok(64));
        assert!(validate_avail(75, 10, 64).is_err());
        assert!(validate_avail(9, 10, 64).is_err(), "tail behind head");
        assert_eq!(validate_avail(3, u64::MAX - 2, 64), Ok(6), "wraps");
        assert!(validate_used(10, 11, 64).is_err(), "head ahead of tail");
    }

    #[test]
    fn publish_skips_wake_when_nobody_waits() {
        let ring = RingCtl::new();
        assert_eq!(publish_tail(&ring, 5), 0);
        assert_eq!(arm_rx(&ring, SLEEP), SLEEP);
        assert_eq!(publish_tail(&ring, 6), SLEEP);
        assert_eq!(ring.rx_wait.load(Ordering::Relaxed), 0);
    }
}
