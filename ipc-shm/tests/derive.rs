//! `#[derive(ShmSafe)]` in a user crate: a struct with a lock and counters, placed in a segment
//! through `Layout` and updated by a forked child and the parent.
//!
//! This file is built under the workspace lints (`undocumented_unsafe_blocks`,
//! `unsafe_op_in_unsafe_fn`, ...) and forbids `unsafe_code`, so it also shows that the generated
//! `unsafe impl` is accepted in a crate that may not write `unsafe` itself. The compile-fail
//! cases are in `ipc-shm-derive/tests/ui`.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use ipc_shm::{Layout, SegmentBuilder, ShmSafe};
use ipc_sync::Lock;
use ipc_tests::fork_child;

const WATCHDOG: Duration = Duration::from_secs(60);
const ROUNDS: u64 = 2_000;

#[derive(ShmSafe)]
#[repr(C)]
struct Totals {
    count: AtomicU64,
    sum: AtomicU64,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Stats {
    lock: Lock,
    /// Updated under `lock`: the pair must always agree (`sum == count * (count + 1) / 2`).
    totals: Totals,
    /// Lock-free counters, one per process.
    per_process: [AtomicU64; 2],
    /// Padding follows this byte: allowed.
    tag: AtomicU8,
}

fn needs_shm_safe<T: ShmSafe>() {}

#[test]
fn derived_struct_is_shm_safe_and_zero_is_its_initial_value() {
    needs_shm_safe::<Stats>();
    needs_shm_safe::<[Totals; 3]>();
    let mut layout = Layout::new();
    let stats = layout.add::<Stats>().unwrap();
    let segment = SegmentBuilder::new(layout.size()).create().unwrap();
    let s = segment.get(stats).unwrap();
    assert!(!s.lock.is_locked());
    assert_eq!(s.totals.count.load(Ordering::Relaxed), 0);
    assert_eq!(s.tag.load(Ordering::Relaxed), 0);
}

#[test]
fn a_derived_struct_is_shared_with_a_forked_child() {
    let mut layout = Layout::new();
    let stats = layout.add::<Stats>().unwrap();
    let segment = SegmentBuilder::new(layout.size()).create().unwrap();

    let bump = |who: usize| {
        let s = segment.get(stats).unwrap();
        for _ in 0..ROUNDS {
            let _g = s.lock.lock().unwrap();
            // Two related fields under the lock: a torn update would break the invariant.
            let n = s.totals.count.load(Ordering::Relaxed) + 1;
            s.totals.count.store(n, Ordering::Relaxed);
            let sum = s.totals.sum.load(Ordering::Relaxed) + n;
            s.totals.sum.store(sum, Ordering::Relaxed);
            s.per_process[who].fetch_add(1, Ordering::Relaxed);
        }
    };
    let child = fork_child(WATCHDOG, || {
        bump(1);
        0
    });
    bump(0);
    child.wait().assert_success();

    let s = segment.get(stats).unwrap();
    let n = s.totals.count.load(Ordering::Relaxed);
    assert_eq!(n, 2 * ROUNDS);
    assert_eq!(s.totals.sum.load(Ordering::Relaxed), n * (n + 1) / 2);
    assert_eq!(s.per_process[0].load(Ordering::Relaxed), ROUNDS);
    assert_eq!(s.per_process[1].load(Ordering::Relaxed), ROUNDS);
}
