//! Shared memory is untrusted: scribbling over the control block and the ring yields errors
//! (or garbage-but-well-formed messages), never a panic, a hang or an out-of-bounds access.

use std::time::Duration;

use ipc_queue::{Queue, QueueBuilder};
use ipc_shm::{Segment, SegmentBuilder};
use proptest::prelude::*;

/// Writes `bytes` at `offset` of the queue's payload through a second mapping of its segment.
fn scribble(seg: &Segment, writes: &[(usize, Vec<u8>)]) {
    let len = seg.len();
    for (off, bytes) in writes {
        let off = off % len;
        let n = bytes.len().min(len - off);
        let slice: &[std::sync::atomic::AtomicU8] =
            seg.slice(ipc_shm::SliceOffset::from_raw(off, n)).unwrap();
        for (cell, b) in slice.iter().zip(bytes) {
            cell.store(*b, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn exercise(q: &Queue<Vec<u8>>) {
    let t = Duration::from_millis(1);
    let _ = q.try_put(vec![1; 10]);
    let _ = q.put_timeout(vec![2; 300], t);
    let _ = q.try_put_bytes(&[3; 5]);
    // (put_many and get block without a deadline: a scribbled "full" queue would wait forever,
    // correctly, so only the bounded forms are exercised.)
    for _ in 0..4 {
        let _ = q.try_get();
        let _ = q.get_timeout(t);
        let mut buf = [0u8; 64];
        let _ = q.try_get_bytes(&mut buf);
        let mut out = Vec::new();
        let _ = q.try_get_many(&mut out, 8);
    }
    let _ = (q.len(), q.is_empty(), q.is_full(), q.is_closed());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn scribbled_queue_never_panics(
        writes in prop::collection::vec((0usize..2048, prop::collection::vec(any::<u8>(), 1..16)), 1..8),
        prefill in 0usize..6,
    ) {
        let _watchdog = ipc_tests::watchdog("scribbled_queue_never_panics", std::time::Duration::from_secs(60));
        let q: Queue<Vec<u8>> = QueueBuilder::new().capacity(1024).build().unwrap();
        for i in 0..prefill {
            q.put(vec![i as u8; i * 7]).unwrap();
        }
        let seg = Segment::from_fd(
            q.fd().try_clone_to_owned().unwrap(),
            ipc_queue::QUEUE_TAG,
        ).unwrap();
        // Control block is the first 512 bytes, the ring the next 1024.
        scribble(&seg, &writes);
        exercise(&q);
        // Opening a scribbled queue is an error or a usable queue, never a panic.
        if let Ok(q2) = Queue::<Vec<u8>>::from_fd(q.fd().try_clone_to_owned().unwrap()) {
            exercise(&q2);
        }
    }
}

/// A byte payload encoded as bytes: 4 KiB and more are decoded in place, from the ring.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Big(#[serde(with = "serde_bytes")] Vec<u8>);

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// The same for large messages, which are decoded straight from the scribbled ring: errors
    /// or wrong values, never a panic, a hang or an unbounded allocation.
    #[test]
    fn scribbled_large_messages_never_panic(
        writes in prop::collection::vec((0usize..(512 + (32 << 10)), prop::collection::vec(any::<u8>(), 1..16)), 1..8),
        sizes in prop::collection::vec(0usize..9000, 1..6),
    ) {
        let _watchdog = ipc_tests::watchdog("scribbled_large_messages_never_panic", std::time::Duration::from_secs(60));
        let q: Queue<Big> = QueueBuilder::new().capacity(32 << 10).build().unwrap();
        for (i, n) in sizes.iter().enumerate() {
            let _ = q.try_put(Big(vec![i as u8; *n]));
        }
        let seg = Segment::from_fd(
            q.fd().try_clone_to_owned().unwrap(),
            ipc_queue::QUEUE_TAG,
        ).unwrap();
        scribble(&seg, &writes);
        let t = Duration::from_millis(1);
        let _ = q.try_put(Big(vec![9; 5000]));
        for _ in 0..4 {
            let _ = q.try_get();
            let _ = q.get_timeout(t);
            let mut out = Vec::new();
            let _ = q.try_get_many(&mut out, 8);
        }
    }
}

#[test]
fn corrupted_commit_word_is_an_error() {
    let _watchdog = ipc_tests::watchdog(
        "corrupted_commit_word_is_an_error",
        std::time::Duration::from_secs(60),
    );
    let q: Queue<u32> = QueueBuilder::new().capacity(1024).build().unwrap();
    q.put(1).unwrap();
    let seg = Segment::from_fd(q.fd().try_clone_to_owned().unwrap(), ipc_queue::QUEUE_TAG).unwrap();
    // The put side's block starts at 128; its lock comes first, the tail word after it.
    // Scribble the whole block except the lock word region start: find the tail by value.
    let words: &[std::sync::atomic::AtomicU64] =
        seg.slice(ipc_shm::SliceOffset::from_raw(128, 16)).unwrap();
    let tail = words
        .iter()
        .find(|w| w.load(std::sync::atomic::Ordering::Relaxed) == (1 << 32) | 16)
        .expect("the tail word");
    tail.store((1 << 32) | 4096, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(
        q.try_get(),
        Err(ipc_queue::TryGetError::Corrupted(_))
    ));
    assert!(matches!(
        q.try_put(2),
        Err(ipc_queue::TryPutError::Corrupted(2, _))
    ));
}

#[test]
fn foreign_segment_is_refused() {
    let _watchdog = ipc_tests::watchdog(
        "foreign_segment_is_refused",
        std::time::Duration::from_secs(60),
    );
    let seg = SegmentBuilder::new(4096)
        .type_tag(ipc_queue::QUEUE_TAG)
        .create()
        .unwrap();
    // Right tag, but no queue was ever initialised in it.
    let r = Queue::<u8>::from_fd(seg.fd().try_clone_to_owned().unwrap());
    assert!(
        matches!(r, Err(ipc_queue::OpenError::Corrupted { .. })),
        "{r:?}"
    );
}

/// Where the ring starts in a queue's payload: after the 512-byte control block.
const RING_OFFSET: usize = 512;

/// A queue of capacity 1024 holding one message, `7u32` (a 4-byte payload), plus a second
/// mapping of its segment through which the test scribbles, and the ring's first header.
fn one_message_queue() -> (Queue<u32>, Segment) {
    let q: Queue<u32> = QueueBuilder::new().capacity(1024).build().unwrap();
    q.put(7).unwrap();
    let seg = Segment::from_fd(q.fd().try_clone_to_owned().unwrap(), ipc_queue::QUEUE_TAG).unwrap();
    let header: &[std::sync::atomic::AtomicU8] = seg
        .slice(ipc_shm::SliceOffset::from_raw(RING_OFFSET, 8))
        .unwrap();
    let expected = ipc_shm::codec::FrameHeader::new(4).unwrap().to_bytes();
    let found: Vec<u8> = header
        .iter()
        .map(|b| b.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    assert_eq!(found, expected, "the first frame's header starts the ring");
    (q, seg)
}

/// A header whose check word matches a length of `len`: the bytes a peer that meant harm (or a
/// stray write of a plausible header) would leave.
fn plausible_header(len: u32) -> Vec<u8> {
    let mut h = len.to_le_bytes().to_vec();
    h.extend_from_slice(&(len ^ 0x9e37_79b9).to_le_bytes());
    h
}

/// Every get form on a queue whose first frame header is `header`: `Corrupted`, never a panic,
/// a huge allocation or a message.
fn assert_gets_corrupted(header: &[u8]) {
    let (q, seg) = one_message_queue();
    scribble(&seg, &[(RING_OFFSET, header.to_vec())]);
    assert!(
        matches!(q.try_get(), Err(ipc_queue::TryGetError::Corrupted(_))),
        "{header:x?}"
    );
    assert!(matches!(
        q.get_timeout(Duration::from_millis(1)),
        Err(ipc_queue::GetTimeoutError::Corrupted(_))
    ));
    let mut buf = [0u8; 64];
    assert!(matches!(
        q.try_get_bytes(&mut buf),
        Err(ipc_queue::GetBytesError::Corrupted(_))
    ));
    let mut out = Vec::new();
    assert!(matches!(
        q.try_get_many(&mut out, 4),
        Err(ipc_queue::GetManyError::Corrupted(_))
    ));
    assert!(out.is_empty());
}

#[test]
fn corrupted_frame_headers_are_errors() {
    let _watchdog = ipc_tests::watchdog(
        "corrupted_frame_headers_are_errors",
        std::time::Duration::from_secs(60),
    );
    // A check word that does not match.
    assert_gets_corrupted(&[1, 0, 0, 0, 0, 0, 0, 0]);
    // Plausible headers announcing more than was committed, more than the ring, more than any
    // frame (1 GiB), and the largest u32.
    for len in [64, 2000, (1 << 30) + 1, u32::MAX] {
        assert_gets_corrupted(&plausible_header(len));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Any header over the first frame: the message back (only if it is the original header)
    /// or `Corrupted`; oversized plausible lengths included.
    #[test]
    fn any_frame_header_is_the_message_or_corrupted(
        header in prop_oneof![
            prop::collection::vec(any::<u8>(), 8),
            any::<u32>().prop_map(plausible_header),
            (0u32..=16).prop_map(plausible_header),
        ],
    ) {
        let _watchdog = ipc_tests::watchdog(
            "any_frame_header_is_the_message_or_corrupted",
            std::time::Duration::from_secs(60),
        );
        let (q, seg) = one_message_queue();
        scribble(&seg, &[(RING_OFFSET, header.clone())]);
        let original = ipc_shm::codec::FrameHeader::new(4).unwrap().to_bytes();
        match q.try_get() {
            Ok(v) => {
                prop_assert_eq!(&header[..], &original[..]);
                prop_assert_eq!(v, 7);
            }
            Err(ipc_queue::TryGetError::Corrupted(_)) => {
                prop_assert_ne!(&header[..], &original[..]);
            }
            // A valid header whose length is not the value's 4 bytes but still ends inside the
            // original frame and its padding (1 to 8 bytes): the frame is well formed, its
            // payload (part of the value, or the value and zeros) is not a `u32`. Payload bytes
            // are not checksummed (crate docs); a typed error.
            Err(ipc_queue::TryGetError::Decode(_)) => {
                let h: [u8; 8] = header[..].try_into().unwrap();
                let len = ipc_shm::codec::frame_len(h, 1024);
                prop_assert!(matches!(len, Ok(1..=3 | 5..=8)), "{len:?}");
            }
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }
}

/// A queue segment of the layout-1 build (separate waiter count and sequence words) is refused
/// with a typed error at open, never misread: its type tag differs.
#[test]
fn layout_v1_segment_is_refused() {
    let _watchdog = ipc_tests::watchdog(
        "layout_v1_segment_is_refused",
        std::time::Duration::from_secs(60),
    );
    let old = SegmentBuilder::new(4096)
        .type_tag(ipc_shm::TypeTag::from_name("ipc-queue/Queue/v1"))
        .create()
        .unwrap();
    let r = Queue::<u8>::from_fd(old.fd().try_clone_to_owned().unwrap());
    assert!(
        matches!(
            r,
            Err(ipc_queue::OpenError::Segment(
                ipc_shm::SegmentOpenError::TagMismatch { .. }
            ))
        ),
        "{r:?}"
    );
}
