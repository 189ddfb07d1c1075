//! The death watch leaks no descriptor: 100 recoveries from killed holders leave this process
//! with as many open descriptors as before. (Alone in its test binary, so that no other test
//! opens descriptors while this one counts them.)

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipc_shm::os::Signal;
use ipc_shm::{Layout, SegmentBuilder};
use ipc_sync::futex::{self, Deadline};
use ipc_sync::{Lock, LockError};
use ipc_tests::fork_child;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// One recovery: a forked holder takes the lock and is SIGKILLed while this thread blocks in
/// `lock()`, which must return `OwnerDied`.
fn recover_once(lock: &Lock, ready: &AtomicU32) {
    ready.store(0, Ordering::Release);
    let holder = fork_child(Duration::from_secs(30), || {
        std::mem::forget(lock.lock().unwrap());
        ready.store(1, Ordering::Release);
        futex::wake_all(ready);
        loop {
            futex::wait(ready, 1, None);
        }
    });
    while ready.load(Ordering::Acquire) == 0 {
        futex::wait(ready, 0, Some(Deadline::after(Duration::from_millis(50))));
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // Not synchronisation: lets the waiter below fall asleep and arm its watch (a kill
            // before that is recovered the same way).
            std::thread::sleep(Duration::from_millis(2));
            holder.signal(Signal::SIGKILL);
        });
        match lock.lock() {
            Err(LockError::OwnerDied(mut g)) => g.mark_consistent(),
            other => panic!("expected OwnerDied, got {other:?}"),
        }
    });
    holder.wait();
}

#[test]
fn a_hundred_recoveries_leak_no_descriptor() {
    let _watchdog = ipc_tests::watchdog("death watch descriptors", Duration::from_secs(120));
    let mut layout = Layout::new();
    let lock_off = layout.add::<Lock>().unwrap();
    let ready_off = layout.add::<AtomicU32>().unwrap();
    let seg = SegmentBuilder::new(layout.size()).create().unwrap();
    let (lock, ready) = (seg.get(lock_off).unwrap(), seg.get(ready_off).unwrap());
    // The first recovery starts the service (its epoll descriptor stays, once per process).
    recover_once(lock, ready);
    let before = open_fds();
    for _ in 0..100 {
        recover_once(lock, ready);
    }
    assert_eq!(open_fds(), before);
}
