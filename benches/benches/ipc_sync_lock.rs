//! ipc-sync `Lock`: uncontended lock+unlock against std, parking_lot and a process-shared
//! pthread mutex; lock hand-off between two processes.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use benches::proc::{PthreadTurn, fork};
use criterion::{Criterion, criterion_group, criterion_main};
use ipc_shm::{Layout, SegmentBuilder};
use ipc_sync::Lock;

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("uncontended");
    let lock = Lock::new();
    g.bench_function("ipc_sync_lock", |b| {
        b.iter(|| drop(black_box(&lock).lock().unwrap()))
    });
    let std_mutex = std::sync::Mutex::new(());
    g.bench_function("compare_std_mutex", |b| {
        b.iter(|| drop(black_box(&std_mutex).lock().unwrap()))
    });
    let pl = parking_lot::Mutex::new(());
    g.bench_function("compare_parking_lot_mutex", |b| {
        b.iter(|| drop(black_box(&pl).lock()))
    });
    let pthread = PthreadTurn::new();
    g.bench_function("compare_pthread_process_shared", |b| {
        b.iter(|| {
            black_box(pthread.mutex()).lock();
            pthread.mutex().unlock();
        })
    });
    g.finish();
}

/// Two processes take turns: a turn word says whose turn it is, and each side locks, checks
/// the turn, passes it, and unlocks; so every acquisition hands the lock to the other process.
fn cross_process(c: &mut Criterion) {
    let mut layout = Layout::new();
    let lock_off = layout.add::<Lock>().unwrap();
    let turn_off = layout.add::<AtomicU32>().unwrap();
    let seg = SegmentBuilder::new(layout.size()).create().unwrap();
    let lock = seg.get(lock_off).unwrap();
    let turn = seg.get(turn_off).unwrap();
    const STOP: u32 = 2;
    let child = fork(|| {
        loop {
            let g = lock.lock().unwrap();
            match turn.load(Ordering::Relaxed) {
                1 => turn.store(0, Ordering::Relaxed),
                STOP => return,
                _ => {}
            }
            drop(g);
        }
    });
    let mut g = c.benchmark_group("cross_process");
    g.bench_function("lock_handoff_round_trip", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut done = 0;
            while done < iters {
                let g = lock.lock().unwrap();
                if turn.load(Ordering::Relaxed) == 0 {
                    turn.store(1, Ordering::Relaxed);
                    done += 1;
                }
                drop(g);
            }
            start.elapsed()
        })
    });
    g.finish();
    let g = lock.lock().unwrap();
    turn.store(STOP, Ordering::Relaxed);
    drop(g);
    child.wait();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = uncontended, cross_process
}
criterion_main!(benches);
