//! The pool's frame and message decoders fed garbage: random bytes, truncated frames, corrupted
//! and oversized frame headers, and container lengths claiming up to 2^60 bytes. Every case is a
//! typed error (or a value), never a panic, and never an allocation beyond the decode limit;
//! hostile lengths the frame header or the decode limit refuse allocate nothing near their claim.
//!
//! The allocations are measured by the test-support crate's counting allocator
//! (`ipc_tests::alloc`, a dev-dependency), installed as this test binary's global allocator only
//! under `cfg(test)`, as `ipc-shm/tests/codec.rs` does; no `unsafe` is needed here.

use ipc_shm::codec::{DECODE_LIMIT, DecodeError, FrameError, FrameHeader, HEADER_LEN};
use ipc_tests::alloc::{CountingAllocator, largest_allocation};
use proptest::prelude::*;

use crate::error::TaskError;
use crate::result::decode_outcomes;
use crate::task::{Failure, TaskRef};
use crate::wire::codec::{self, CodecDecodeError};
use crate::wire::protocol::{FromWorker, ToWorker, frame, unframe};

/// Records the largest single allocation of each thread (the harness's one counting
/// allocator), so tests can show that decoding garbage never asks for more than the decode
/// limit.
#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

/// What "nothing allocated" means for a tiny input refused by its frame header or by the decode
/// limit: error messages and a few outcomes.
const NOTHING: usize = 4096;

/// The most a tiny input claiming a huge *sequence* makes serde allocate: serde's `Vec`
/// deserializer trusts a length hint only up to 1 MiB of elements (`size_hint::cautious`) and
/// grows from there as elements actually arrive, so the claim costs at most that before the input
/// runs out. (A string or byte string longer than the input is refused before allocating:
/// `ipc_shm::codec` reads it within the bytes left.)
const SEQUENCE_PREALLOCATION: usize = 1 << 20;

fn task() -> TaskRef {
    TaskRef::new::<u64, u64>(|x| x)
}

/// `n` as the codec writes a `u64` (and a length).
fn encoded_u64(n: u64) -> Vec<u8> {
    ipc_shm::codec::encode(&n).expect("a u64 encodes")
}

/// A frame header with a matching check word announcing `len` bytes, whatever `len` is (what a
/// hostile peer, not random corruption, would write).
fn hostile_header(len: u32) -> [u8; HEADER_LEN] {
    let check = FrameHeader::new(0).expect("0 fits").to_bytes();
    let check_word = u32::from_le_bytes([check[4], check[5], check[6], check[7]]);
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&(len ^ check_word).to_le_bytes());
    h
}

/// A well-formed frame whose header's last field, an empty string, is replaced by a string
/// length of `claim` (and `tail`): the frame header is valid, the claim is inside the value.
fn frame_claiming(claim: u64, tail: &[u8]) -> Vec<u8> {
    let header = FromWorker::InitFailed {
        failure: Failure::Panicked(String::new()),
    };
    let mut value = codec::encode(&header).expect("encodes");
    let len_at = value.len() - ipc_shm::codec::SEQUENCE_LEN_BYTES;
    assert_eq!(
        value[len_at..],
        encoded_u64(0),
        "the empty string's length comes last"
    );
    value.truncate(len_at);
    value.extend_from_slice(&encoded_u64(claim));
    value.extend_from_slice(tail);
    let mut out = FrameHeader::new(value.len())
        .expect("small")
        .to_bytes()
        .to_vec();
    out.extend_from_slice(&value);
    out
}

/// Runs every decoder the pool applies to bytes from another process.
fn decode_everything(bytes: &[u8]) {
    let _ = unframe::<FromWorker>(bytes);
    let _ = unframe::<ToWorker>(bytes);
    let _ = decode_outcomes::<String>(3, bytes);
    let _ = decode_outcomes::<Vec<u64>>(1, bytes);
    let _ = decode_outcomes::<(u32, Option<String>)>(2, bytes);
    let _ = codec::decode::<Vec<(u64, String)>>(bytes);
    let _ = codec::decode::<Vec<Result<(), Failure>>>(bytes);
}

#[test]
fn the_allocator_sees_allocations() {
    let (v, largest) = largest_allocation(|| vec![1u8; 10_000]);
    assert_eq!(v.len(), 10_000);
    assert!(largest >= 10_000, "{largest}");
}

#[test]
fn frames_round_trip() {
    let payload = codec::encode(&vec![1u64, 2, 3]).expect("encodes");
    let mut out = Vec::new();
    frame(
        &ToWorker::Run {
            job: 7,
            task: task(),
            fds: None,
            bulk: None,
        },
        &payload,
        &mut out,
    )
    .expect("frames");
    let (header, rest) = unframe::<ToWorker>(&out).expect("unframes");
    assert!(
        matches!(header, ToWorker::Run { job: 7, task: t, fds: None, bulk: None } if t == task())
    );
    assert_eq!(rest, payload);
    assert_eq!(codec::decode::<Vec<u64>>(rest).expect("decodes"), [1, 2, 3]);

    // A frame replaces what the buffer held; an empty payload is an empty slice.
    frame(&FromWorker::InitDone, &[], &mut out).expect("frames");
    let (header, rest) = unframe::<FromWorker>(&out).expect("unframes");
    assert!(matches!(header, FromWorker::InitDone));
    assert!(rest.is_empty());
}

#[test]
fn truncated_frames_are_typed_errors() {
    let mut out = Vec::new();
    let failure = Failure::Panicked("a message long enough to be cut".into());
    frame(&FromWorker::ChunkFailed { job: 3, failure }, &[], &mut out).expect("frames");
    for cut in 0..out.len() {
        let err = unframe::<FromWorker>(&out[..cut]).expect_err("a cut frame");
        if cut < HEADER_LEN {
            assert!(
                matches!(err, CodecDecodeError::Truncated { len } if len == cut),
                "{cut}: {err:?}"
            );
        } else {
            // The header announces more than is left.
            assert!(
                matches!(err, CodecDecodeError::Header(FrameError::TooLong { .. })),
                "{cut}: {err:?}"
            );
        }
    }
    // Outcomes cut short: every argument gets a typed error, none is lost.
    let outcomes = codec::encode(&vec![Ok::<u64, Failure>(1), Ok(2)]).expect("encodes");
    for cut in 0..outcomes.len() {
        let decoded = decode_outcomes::<u64>(2, &outcomes[..cut]);
        assert_eq!(decoded.len(), 2);
        assert!(
            decoded
                .iter()
                .all(|o| matches!(o, Err(TaskError::Result(_)))),
            "{cut}: {decoded:?}"
        );
    }
}

#[test]
fn corrupted_frame_headers_are_refused() {
    let mut out = Vec::new();
    frame(&FromWorker::InitDone, b"payload", &mut out).expect("frames");
    for bit in 0..HEADER_LEN * 8 {
        let mut bytes = out.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let err = unframe::<FromWorker>(&bytes).expect_err("a flipped bit");
        assert!(
            matches!(err, CodecDecodeError::Header(FrameError::BadCheck { .. })),
            "{bit}: {err:?}"
        );
    }
    // Trailing bytes after the header's value are refused, not ignored: the header length says
    // where the payload starts, and the value must fill it.
    let mut bytes = out.clone();
    // `InitDone` is its variant index (4 bytes): one byte of the payload more is trailing.
    let header = hostile_header(5);
    bytes[..HEADER_LEN].copy_from_slice(&header);
    assert!(matches!(
        unframe::<FromWorker>(&bytes),
        Err(CodecDecodeError::Value(e)) if matches!(*e, DecodeError::TrailingBytes { .. })
    ));
}

/// A frame header claiming up to `u32::MAX` bytes is refused before anything is decoded or
/// allocated, whatever follows it.
#[test]
fn oversized_frame_headers_allocate_nothing() {
    for claim in [u32::MAX, 1 << 30, (1 << 30) + 1, 3 << 30, 100] {
        let mut bytes = hostile_header(claim).to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let (r, largest) = largest_allocation(|| unframe::<FromWorker>(&bytes).map(drop));
        assert!(
            matches!(r, Err(CodecDecodeError::Header(FrameError::TooLong { .. }))),
            "{claim}: {r:?}"
        );
        assert!(largest < NOTHING, "{claim}: allocated {largest} bytes");
    }
}

/// Container lengths beyond the decode limit (up to 2^60 and `u64::MAX`) inside a valid frame,
/// and in front of a run of outcomes, are refused before allocating: had the decoder tried, the
/// allocation would have aborted the process instead of returning.
#[test]
fn hostile_container_lengths_allocate_nothing() {
    for claim in [
        1u64 << 60,
        u64::MAX,
        DECODE_LIMIT as u64 + 1,
        u64::from(u32::MAX),
    ] {
        let bytes = frame_claiming(claim, b"x");
        let (r, largest) = largest_allocation(|| unframe::<FromWorker>(&bytes).map(drop));
        assert!(
            matches!(&r, Err(CodecDecodeError::Value(e)) if matches!(**e, DecodeError::Bincode(_))),
            "{claim}: {r:?}"
        );
        assert!(largest < NOTHING, "{claim}: allocated {largest} bytes");

        let payload = encoded_u64(claim);
        let (outcomes, largest) = largest_allocation(|| decode_outcomes::<String>(2, &payload));
        assert_eq!(outcomes.len(), 2);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Err(TaskError::Result(_))))
        );
        assert!(
            largest <= SEQUENCE_PREALLOCATION,
            "{claim}: allocated {largest} bytes"
        );

        let (r, largest) = largest_allocation(|| codec::decode::<String>(&payload).map(drop));
        assert!(r.is_err());
        assert!(largest < NOTHING, "{claim}: allocated {largest} bytes");

        let (r, largest) = largest_allocation(|| codec::decode::<Vec<u8>>(&payload).map(drop));
        assert!(r.is_err());
        assert!(
            largest <= SEQUENCE_PREALLOCATION,
            "{claim}: allocated {largest} bytes"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes, bare and behind a valid frame header: typed errors or values, no panic, no
    /// allocation beyond the decode limit.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let ((), largest) = largest_allocation(|| decode_everything(&bytes));
        prop_assert!(largest <= DECODE_LIMIT, "allocated {} bytes", largest);

        let mut framed = FrameHeader::new(bytes.len()).expect("small").to_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let ((), largest) = largest_allocation(|| decode_everything(&framed));
        prop_assert!(largest <= DECODE_LIMIT, "allocated {} bytes", largest);
    }

    /// A frame header announcing any length up to `u32::MAX` more than what follows it: refused,
    /// with nothing allocated near the claim.
    #[test]
    fn any_oversized_frame_header_is_refused(
        claim in 65u32..=u32::MAX,
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = hostile_header(claim).to_vec();
        bytes.extend_from_slice(&tail);
        let (r, largest) = largest_allocation(|| unframe::<ToWorker>(&bytes).map(drop));
        prop_assert!(
            matches!(r, Err(CodecDecodeError::Header(FrameError::TooLong { .. }))),
            "{:?}", r
        );
        prop_assert!(largest < NOTHING, "allocated {} bytes", largest);
    }

    /// A valid frame whose header claims a string longer than the decode limit (up to 2^64):
    /// a typed error before allocating. A run of outcomes claiming as many elements: a typed
    /// error for the argument, after at most serde's cautious preallocation.
    #[test]
    fn any_claim_beyond_the_limit_is_refused(
        claim in (DECODE_LIMIT as u64 + 1)..=u64::MAX,
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = frame_claiming(claim, &tail);
        let (r, largest) = largest_allocation(|| unframe::<FromWorker>(&bytes).map(drop));
        prop_assert!(matches!(r, Err(CodecDecodeError::Value(_))), "{:?}", r);
        prop_assert!(largest < NOTHING, "allocated {} bytes", largest);

        let payload = [encoded_u64(claim), tail].concat();
        let (outcomes, largest) = largest_allocation(|| decode_outcomes::<Vec<u64>>(1, &payload));
        prop_assert!(matches!(outcomes.as_slice(), [Err(TaskError::Result(_))]), "{:?}", outcomes);
        prop_assert!(largest <= SEQUENCE_PREALLOCATION, "allocated {} bytes", largest);
    }

    /// Whatever the header and payload, a frame built by `frame` comes back out of `unframe`.
    #[test]
    fn any_frame_round_trips(
        job in any::<u64>(),
        message in ".{0,64}",
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut out = Vec::new();
        let sent = FromWorker::ChunkFailed { job, failure: Failure::Panicked(message.clone()) };
        frame(&sent, &payload, &mut out).expect("frames");
        let (header, rest) = unframe::<FromWorker>(&out).expect("unframes");
        let matched = matches!(
            header,
            FromWorker::ChunkFailed { job: j, failure: Failure::Panicked(m) } if j == job && m == message
        );
        prop_assert!(matched);
        prop_assert_eq!(rest, payload.as_slice());
    }
}
