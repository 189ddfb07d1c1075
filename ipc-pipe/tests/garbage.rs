//! The receive path fed garbage: random bytes, forged frame headers with lengths beyond the
//! receiver's maximum, and valid headers followed by undecodable payloads, all sent through a
//! real pipe by a peer that skips the framing (`__send_raw`, feature `test-support`). Every
//! outcome is a message or a typed error (`Corrupted`, `TooLarge`, `Decode`, `Disconnected`),
//! never a panic or a hang (each case runs under a watchdog), and the receiver never allocates
//! much more than its `max_message_size` (measured with a tracking allocator).

use std::time::Duration;

use ipc_pipe::{Connection, PipeBuilder, RecvError};
use ipc_shm::codec::{FrameHeader, MAX_FRAME_LEN};
use ipc_tests::alloc::{CountingAllocator, largest_allocation};
use proptest::prelude::*;

/// The receiver's maximum message size in these tests.
const MAX: usize = 1 << 16;
/// The ring: small, so longer garbage also exercises streaming.
const CAP: usize = 4096;
/// The largest single allocation a receive may make: the message buffer (at most `MAX`) or
/// what serde pre-allocates for a decoded container (at most 1 MiB, bincode's cautious hint).
const ALLOC_BOUND: usize = 2 << 20;
/// The frame header's check constant (`ipc_shm::codec`'s wire format).
const CHECK: u32 = 0x9e37_79b9;

/// The harness's allocator, recording the largest single allocation of each thread.
#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

/// A header with a valid check word announcing `len` (which may exceed any maximum).
fn forged_header(len: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&(len ^ CHECK).to_le_bytes());
    h
}

/// A decoded type with containers, strings and enums: garbage has many ways to be wrong.
type Value = Vec<(String, Option<Vec<u64>>)>;

/// Sends `bytes` raw from a fresh pipe's end, drops that end, and receives on the other until
/// the stream ends: returns every outcome. Panics on an untyped outcome or a large allocation.
fn receive_garbage(bytes: &[u8], as_value: bool) -> Vec<Result<(), RecvError>> {
    let _watchdog = ipc_tests::watchdog("ipc-pipe garbage frames", Duration::from_secs(60));
    let (a, b) = PipeBuilder::new()
        .capacity(CAP)
        .max_message_size(MAX)
        .duplex()
        .unwrap();
    // Larger than the ring: a thread sends while this one receives.
    let owned = bytes.to_vec();
    let sender = std::thread::spawn(move || {
        let _ = a.__send_raw(&owned);
        drop(a);
    });
    let mut outcomes = Vec::new();
    // Each receive consumes a frame or ends the stream with an error, so this terminates; the
    // bound is a second line of defence.
    for _ in 0..bytes.len() + 2 {
        let (r, largest) = receive_one(&b, as_value);
        assert!(
            largest <= ALLOC_BOUND,
            "a receive allocated {largest} bytes"
        );
        let done = r.is_err();
        outcomes.push(r);
        if done {
            break;
        }
    }
    // A receiver that stopped at an error must not leave the sender waiting for space.
    drop(b);
    sender.join().unwrap();
    let last = outcomes.last().expect("at least one receive");
    assert!(
        matches!(
            last,
            Err(RecvError::Disconnected
                | RecvError::Corrupted(_)
                | RecvError::TooLarge { .. }
                | RecvError::Decode(_))
        ),
        "{last:?}"
    );
    outcomes
}

fn receive_one(b: &Connection, as_value: bool) -> (Result<(), RecvError>, usize) {
    largest_allocation(|| {
        if as_value {
            b.recv::<Value>().map(drop)
        } else {
            b.recv_bytes().map(drop)
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random bytes: almost never a valid header, so `Corrupted` (bad check word) at once.
    #[test]
    fn random_bytes_are_typed_errors(
        bytes in proptest::collection::vec(any::<u8>(), 0..3 * CAP),
        as_value in any::<bool>(),
    ) {
        receive_garbage(&bytes, as_value);
    }

    /// A valid check word announcing more than the receiver's maximum (up to `u32::MAX`):
    /// `TooLarge` before anything is allocated for it, and the stream stays broken.
    #[test]
    fn oversized_length_headers_are_too_large(
        len in (MAX as u32 + 1)..=u32::MAX,
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        as_value in any::<bool>(),
    ) {
        let mut bytes = forged_header(len).to_vec();
        bytes.extend_from_slice(&tail);
        let outcomes = receive_garbage(&bytes, as_value);
        prop_assert_eq!(outcomes.len(), 1);
        let max = MAX.min(MAX_FRAME_LEN);
        let announced = u64::from(len);
        prop_assert!(
            matches!(outcomes[0], Err(RecvError::TooLarge { len, max: m }) if len == announced && m == max),
            "{:?}", outcomes[0]
        );
    }

    /// A valid header and a payload of garbage (possibly cut short by the sender's exit): the
    /// bytes are received as bytes, and as a value they are a message or `Decode` (bincode's
    /// limit bounds what a hostile container length makes it allocate).
    #[test]
    fn garbage_payloads_decode_to_typed_errors(
        payload in proptest::collection::vec(any::<u8>(), 0..2 * CAP),
        cut in any::<prop::sample::Index>(),
        as_value in any::<bool>(),
    ) {
        let mut bytes = FrameHeader::new(payload.len()).unwrap().to_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        let keep = 8 + cut.index(payload.len() + 1);
        let outcomes = receive_garbage(&bytes[..keep], as_value);
        if keep == bytes.len() && !as_value {
            prop_assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
        }
        if keep < bytes.len() {
            prop_assert!(matches!(outcomes[0], Err(RecvError::Disconnected)), "{:?}", outcomes[0]);
        }
    }
}

/// A frame header announcing the largest length a `u32` holds, then the sender goes away: one
/// `TooLarge`, and the end stays broken (the stream's framing is lost).
#[test]
fn the_largest_forged_length_breaks_the_stream() {
    let _watchdog = ipc_tests::watchdog("ipc-pipe forged length", Duration::from_secs(60));
    let (a, b) = PipeBuilder::new().max_message_size(MAX).duplex().unwrap();
    a.__send_raw(&forged_header(u32::MAX)).unwrap();
    a.send_bytes(b"after").unwrap();
    assert!(matches!(
        b.recv_bytes(),
        Err(RecvError::TooLarge { len, max: MAX }) if len == u64::from(u32::MAX)
    ));
    assert!(matches!(b.recv_bytes(), Err(RecvError::Corrupted(_))));
}
