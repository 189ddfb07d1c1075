//! Conformance of the byte-ring backends: one generic test body, run on the heap ring and on a
//! ring in a shared-memory segment (as iceoryx2 does for its concept traits).

use std::sync::Arc;

use ipc_shm::{ByteRing, HeapRing, RingError, Segment, SegmentBuilder, ShmRing};
use proptest::prelude::*;

#[path = "support/ring_conformance.rs"]
mod conformance;

use conformance::{CAP, conformance};

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
