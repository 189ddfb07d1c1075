//! The one conformance test body of `ByteRing`, shared by every backend: the heap and shm rings
//! (`tests/ring.rs`) and the loom ring (the loom tests in `src/ring.rs`, which include this file).
#![allow(dead_code)]

use super::ByteRing;

/// The capacity of the ring every backend is tested with.
pub(crate) const CAP: usize = 64;

/// The one test body every backend must pass. `ring` has capacity `CAP`.
pub(crate) fn conformance(ring: &impl ByteRing) {
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

pub(crate) fn snapshot(ring: &impl ByteRing) -> Vec<u8> {
    let mut v = Vec::new();
    ring.append_at(0, ring.cap(), &mut v);
    v
}
