//! What the derive accepts: atomics, integers, floats, arrays, nested derived structs,
//! ipc_sync primitives, repr(transparent), repr(C, align), generic and const-generic structs,
//! padding, and all of it under `#![forbid(unsafe_code)]`.
#![forbid(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use ipc_shm::{Layout, SegmentBuilder, ShmSafe};
use ipc_sync::{Barrier, Event, Lock, Mutex, RLock, Semaphore};

#[derive(ShmSafe)]
#[repr(C)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Padded {
    flag: AtomicU8, // seven bytes of padding follow: allowed
    total: AtomicU64,
}

#[derive(ShmSafe)]
#[repr(C, align(64))]
struct OwnLine(AtomicU64);

#[derive(ShmSafe)]
#[repr(transparent)]
struct Id(u64);

#[derive(ShmSafe)]
#[repr(C)]
struct Ring<T, const N: usize> {
    head: AtomicU32,
    slots: [T; N],
}

#[derive(ShmSafe)]
#[repr(C)]
struct Pair<T>
where
    T: Send,
{
    a: T,
    b: T,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Marker;

#[derive(ShmSafe)]
#[repr(C)]
struct Shared {
    lock: Lock,
    rlock: RLock,
    ready: Event,
    slots: Semaphore,
    barrier: Barrier,
    guarded: Mutex<[u64; 4]>,
    counters: Counters,
    per_worker: [Counters; 4],
    lines: [OwnLine; 2],
    ring: Ring<AtomicU32, 8>,
    pair: Pair<AtomicU64>,
    id: Id,
    ratio: f64,
    unit: (),
    marker: Marker,
}

fn needs_shm_safe<T: ShmSafe>() {}

fn main() {
    needs_shm_safe::<Shared>();
    needs_shm_safe::<Padded>();
    needs_shm_safe::<Pair<Counters>>();

    let mut layout = Layout::new();
    let shared = layout.add::<Shared>().unwrap();
    let segment = SegmentBuilder::new(layout.size()).create().unwrap();
    let s = segment.get(shared).unwrap();
    let guard = s.lock.lock().unwrap();
    s.counters.hits.fetch_add(1, Ordering::Relaxed);
    s.per_worker[3].misses.fetch_add(2, Ordering::Relaxed);
    s.ring.slots[7].store(9, Ordering::Relaxed);
    drop(guard);
    assert_eq!(s.counters.hits.load(Ordering::Relaxed), 1);
    assert_eq!(s.id.0, 0);
}
