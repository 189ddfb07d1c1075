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
