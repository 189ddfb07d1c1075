//! Conformance of the byte-ring backends: one generic test body, run on the heap ring and on a
//! ring in a shared-memory segment (as iceoryx2 does for its concept traits).

use std::sync::Arc;

use ipc_shm::{ByteRing, HeapRing, RingError, Segment, SegmentBuilder, ShmRing};
use proptest::prelude::*;

const CAP: usize = 64;

/// A shm ring of `CAP` bytes placed in the middle of a larger payload, with guard bytes on both
/// sides that must never change.
struct Guarded {
    seg: Arc<Segment>,
}

const GUARD: u8 = 0xA5;
const OFFSET: usize = 128;

impl Guarded {
    fn new() -> Self {
        let seg = Arc::new(SegmentBuilder::new(OFFSET + CAP + 128).create().unwrap());
        // SAFETY: the segment is fresh and private to this test; the whole payload is in bounds.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::write_bytes(seg.as_ptr(), GUARD, seg.len())
        };
        Guarded { seg }
    }

    fn ring(&self) -> ShmRing<Arc<Segment>> {
        ShmRing::new(self.seg.clone(), OFFSET, CAP).unwrap()
    }

    fn assert_guards_intact(&self) {
        let mut all = vec![0u8; self.seg.len()];
        // SAFETY: reads the whole payload, in bounds, of a segment no other thread writes now.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(self.seg.as_ptr(), all.as_mut_ptr(), all.len())
        };
        assert!(
            all[..OFFSET].iter().all(|&b| b == GUARD),
            "bytes before the ring changed"
        );
        assert!(
            all[OFFSET + CAP..].iter().all(|&b| b == GUARD),
            "bytes after the ring changed"
        );
    }
}

/// The one test body every backend must pass. `ring` has capacity `CAP`.
fn conformance(ring: &impl ByteRing) {
    assert_eq!(ring.cap(), CAP);

    // Plain round trip, and positions are taken modulo the capacity.
    ring.write(3, b"hello");
    let mut out = [0u8; 5];
    ring.read(3 + 7 * CAP as u64, &mut out);
    assert_eq!(&out, b"hello");

    // Wrap-around: split into the tail end and the start.
    let data: Vec<u8> = (100..140).collect();
    let pos = u64::MAX - 9; // offset CAP - 10: 10 bytes before the end, 30 after the wrap
    ring.write(pos, &data);
    let mut out = vec![0u8; data.len()];
    ring.read(pos, &mut out);
    assert_eq!(out, data);
    let mut tail = [0u8; 10];
    ring.read_at(CAP - 10, &mut tail);
    assert_eq!(&tail[..], &data[..10]);
    let mut head = [0u8; 30];
    ring.read_at(0, &mut head);
    assert_eq!(&head[..], &data[10..]);

    // Append, wrapping, after existing contents.
    let mut v = b"xy".to_vec();
    ring.append(pos, data.len(), &mut v);
    assert_eq!(&v[..2], b"xy");
    assert_eq!(&v[2..], &data[..]);

    // Zero-length copies do nothing, wherever they point.
    ring.write(17, &[]);
    ring.write_at(CAP, &[]);
    let mut empty: [u8; 0] = [];
    ring.read(u64::MAX, &mut empty);
    let mut v = b"keep".to_vec();
    ring.append(5, 0, &mut v);
    ring.append_at(CAP, 0, &mut v);
    assert_eq!(v, b"keep");

    // Exactly the capacity, from an unaligned position: the whole ring, rotated.
    let full: Vec<u8> = (0..CAP as u8).map(|b| b.wrapping_mul(3)).collect();
    ring.write(1000, &full);
    let mut out = vec![0u8; CAP];
    ring.read(1000, &mut out);
    assert_eq!(out, full);
    let mut v = Vec::new();
    ring.append(1000, CAP, &mut v);
    assert_eq!(v, full);

    // Out of range is a no-op: longer than the ring, or past the end for the unwrapped calls.
    let before = snapshot(ring);
    ring.write(0, &[0xEE; CAP + 1]);
    ring.write_at(CAP - 2, &[0xEE; 3]);
    ring.write_at(usize::MAX, &[0xEE; 2]);
    ring.write_at(CAP + 1, &[]);
    assert_eq!(
        snapshot(ring),
        before,
        "an out-of-range write changed the ring"
    );
    let mut out = [0x11u8; CAP + 1];
    ring.read(0, &mut out);
    assert!(
        out.iter().all(|&b| b == 0x11),
        "an oversized read wrote its buffer"
    );
    let mut out = [0x11u8; 4];
    ring.read_at(CAP - 3, &mut out);
    ring.read_at(usize::MAX - 1, &mut out);
    assert_eq!(out, [0x11; 4]);
    let mut v = b"k".to_vec();
    ring.append(0, CAP + 1, &mut v);
    ring.append_at(CAP - 1, 2, &mut v);
    ring.append_at(usize::MAX, 2, &mut v);
    assert_eq!(v, b"k");
}

fn snapshot(ring: &impl ByteRing) -> Vec<u8> {
    let mut v = Vec::new();
    ring.append_at(0, ring.cap(), &mut v);
    v
}

#[test]
fn heap_ring_conforms() {
    conformance(&HeapRing::new(CAP).unwrap());
}

#[test]
fn shm_ring_conforms() {
    let g = Guarded::new();
    conformance(&g.ring());
    g.assert_guards_intact();
}

#[test]
fn borrowed_shm_ring_conforms() {
    let seg = SegmentBuilder::new(CAP).create().unwrap();
    let ring: ShmRing<&Segment> = ShmRing::new(&seg, 0, CAP).unwrap();
    conformance(&ring);
}

#[test]
fn construction_is_checked() {
    assert_eq!(
        HeapRing::new(0).unwrap_err(),
        RingError::NotPowerOfTwo { cap: 0 }
    );
    assert_eq!(
        HeapRing::new(48).unwrap_err(),
        RingError::NotPowerOfTwo { cap: 48 }
    );
    let seg = SegmentBuilder::new(256).create().unwrap();
    assert_eq!(
        ShmRing::new(&seg, 200, 64).unwrap_err(),
        RingError::OutOfBounds {
            offset: 200,
            cap: 64,
            payload: 256
        }
    );
    assert!(matches!(
        ShmRing::new(&seg, usize::MAX, 64),
        Err(RingError::OutOfBounds { .. })
    ));
    assert!(matches!(
        ShmRing::new(&seg, 0, 48),
        Err(RingError::NotPowerOfTwo { cap: 48 })
    ));
    let ring = ShmRing::new(&seg, 192, 64).unwrap();
    assert_eq!(
        (ring.cap(), ring.offset(), ring.segment().len()),
        (64, 192, 256)
    );
}

/// The pipe's ring test, kept: a copy far into the counter that wraps.
#[test]
fn wraps_and_stays_in_bounds() {
    let seg = Arc::new(SegmentBuilder::new(256).create().unwrap());
    let ring = ShmRing::new(seg, 64, 64).unwrap();
    let data: Vec<u8> = (0..40).collect();
    ring.write(1_000_000_030, &data);
    let mut out = vec![0u8; 40];
    ring.read(1_000_000_030, &mut out);
    assert_eq!(out, data);
}

/// A `u32` position (the queue's) reduces like the `u64` one it widens to.
#[test]
fn u32_positions_widen() {
    let ring = HeapRing::new(CAP).unwrap();
    let pos = u32::MAX - 4;
    ring.write(u64::from(pos), b"0123456789");
    let mut out = [0u8; 10];
    ring.read(u64::from(pos.wrapping_add(0)), &mut out);
    assert_eq!(&out, b"0123456789");
    let mut out = [0u8; 5];
    ring.read(u64::from(pos.wrapping_add(5)), &mut out); // wrapped u32 counter: position 0
    assert_eq!(&out, b"56789");
}

fn round_trips(ring: &impl ByteRing, pos: u64, data: &[u8]) -> Result<(), TestCaseError> {
    ring.write(pos, data);
    let mut out = vec![0u8; data.len()];
    ring.read(pos, &mut out);
    prop_assert_eq!(&out, data);
    let mut v = vec![7u8];
    ring.append(pos, data.len(), &mut v);
    prop_assert_eq!(&v[1..], data);
    // The same bytes a whole number of laps later.
    let later = pos.wrapping_add((ring.cap() as u64) * 12_345);
    ring.read(later, &mut out);
    prop_assert_eq!(&out, data);
    Ok(())
}

proptest! {
    #[test]
    fn heap_round_trips(pos in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..=CAP)) {
        round_trips(&HeapRing::new(CAP).unwrap(), pos, &data)?;
    }

    #[test]
    fn shm_round_trips(pos in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..=CAP)) {
        let g = Guarded::new();
        round_trips(&g.ring(), pos, &data)?;
        g.assert_guards_intact();
    }

    #[test]
    fn shm_out_of_range_never_escapes(off in any::<usize>(), len in 0usize..=3 * CAP, pos in any::<u64>()) {
        let g = Guarded::new();
        let ring = g.ring();
        ring.write_at(off, &vec![0x5Au8; len]);
        ring.write(pos, &vec![0x5Au8; len]);
        let mut out = vec![0u8; len];
        ring.read_at(off, &mut out);
        let mut v = Vec::new();
        ring.append_at(off, len, &mut v);
        ring.append(pos, len, &mut v);
        g.assert_guards_intact();
    }
}
