//! ipc-sync `Lock`: uncontended lock+unlock against std, parking_lot and a process-shared
//! pthread mutex; lock hand-off between two processes; how fast a waiter learns that the
//! holder's process was SIGKILLed (`owner_death/recovery`).

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use benches::proc::{PthreadTurn, fork};
use criterion::{Criterion, criterion_group, criterion_main};
use ipc_shm::os::{self, Signal};
use ipc_shm::{Layout, SegmentBuilder};
use ipc_sync::{Lock, LockError};

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

/// A forked holder locks and says so; a waiter thread here blocks on the lock; the holder is
/// SIGKILLed and the time from the kill to the waiter's `OwnerDied` is measured (fork, hand-shake
/// and the pause that lets the waiter fall asleep are outside the timing).
fn owner_death(c: &mut Criterion) {
    let mut layout = Layout::new();
    let lock_off = layout.add::<Lock>().unwrap();
    let ready_off = layout.add::<AtomicU32>().unwrap();
    let seg = SegmentBuilder::new(layout.size()).create().unwrap();
    let lock = seg.get(lock_off).unwrap();
    let ready = seg.get(ready_off).unwrap();
    let mut g = c.benchmark_group("owner_death");
    // Each iteration forks a process and lets the waiter fall asleep: few, slow iterations.
    g.sample_size(10);
    g.bench_function("recovery", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                ready.store(0, Ordering::Release);
                let holder = fork(|| {
                    std::mem::forget(lock.lock().unwrap());
                    ready.store(1, Ordering::Release);
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                });
                while ready.load(Ordering::Acquire) == 0 {
                    std::thread::yield_now();
                }
                std::thread::scope(|s| {
                    let waiter = s.spawn(|| match lock.lock() {
                        Err(LockError::OwnerDied(mut guard)) => {
                            let at = Instant::now();
                            guard.mark_consistent();
                            at
                        }
                        other => panic!("expected OwnerDied, got {other:?}"),
                    });
                    // Not synchronisation (a benchmark): lets the waiter get past its spin and
                    // first short sleep, so that it is asleep when the holder dies.
                    std::thread::sleep(Duration::from_millis(5));
                    let killed = Instant::now();
                    os::kill(holder.pid(), Signal::SIGKILL).unwrap();
                    let recovered = waiter.join().unwrap();
                    total += recovered.saturating_duration_since(killed);
                });
                holder.wait();
            }
            total
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = uncontended, cross_process, owner_death
}
criterion_main!(benches);
