//! ipc-sync `Lock`: uncontended lock+unlock against std, parking_lot and a process-shared
//! pthread mutex; lock hand-off between two processes.
#![allow(unsafe_code)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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
    let pthread = PthreadShared::new();
    g.bench_function("compare_pthread_process_shared", |b| {
        b.iter(|| {
            black_box(&pthread).lock();
            pthread.unlock();
        })
    });
    g.finish();
}

/// A `PTHREAD_PROCESS_SHARED` pthread mutex (boxed: it must not move once initialised).
struct PthreadShared(Box<std::cell::UnsafeCell<libc::pthread_mutex_t>>);

impl PthreadShared {
    fn new() -> Self {
        let m = Box::new(std::cell::UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));
        // SAFETY: `attr` is initialised by pthread_mutexattr_init before use and destroyed
        // after; the mutex memory is valid, boxed (never moves) and not yet in use.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutex_init(m.get(), &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
        }
        PthreadShared(m)
    }
    fn lock(&self) {
        // SAFETY: an initialised mutex that outlives the call.
        unsafe { libc::pthread_mutex_lock(self.0.get()) };
    }
    fn unlock(&self) {
        // SAFETY: an initialised mutex held by this thread.
        unsafe { libc::pthread_mutex_unlock(self.0.get()) };
    }
}

/// Forks a child running `body` (killed with the parent via PR_SET_PDEATHSIG); returns its pid.
fn fork(body: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the child only runs `body`, which touches the shared mapping and atomics and
    // makes system calls, then leaves with `_exit` (no atexit handlers, no unwinding).
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            body();
            libc::_exit(0);
        }
        pid
    }
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
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
    reap(child);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = uncontended, cross_process
}
criterion_main!(benches);
