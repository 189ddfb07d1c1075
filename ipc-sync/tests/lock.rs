//! Lock across real processes: mutual exclusion, a SIGKILLed holder, signals during a wait.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use ipc_shm::os::Signal;
use ipc_shm::{Layout, Offset, OpenOptions, Segment, SegmentBuilder, TypeTag};
use ipc_sync::{Lock, LockError, LockTimeoutError, TryLockError};
use ipc_tests::{child, child_entry, fork_child};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};

const TAG: TypeTag = TypeTag::from_name("ipc-sync/tests/lock");
const KEY: &str = "IPC_SYNC_TEST_LOCK_FD";
const WATCHDOG: Duration = Duration::from_secs(30);
const INCREMENTS: u64 = 100_000;

struct Offsets {
    lock: Offset<Lock>,
    counter: Offset<AtomicU64>,
    flag: Offset<AtomicU32>,
}

fn layout() -> (usize, Offsets) {
    let mut l = Layout::new();
    let lock = l.add::<Lock>().unwrap();
    let counter = l.add::<AtomicU64>().unwrap();
    let flag = l.add::<AtomicU32>().unwrap();
    (
        l.size(),
        Offsets {
            lock,
            counter,
            flag,
        },
    )
}

fn create() -> (Segment, Offsets) {
    let (size, offs) = layout();
    (
        SegmentBuilder::new(size).type_tag(TAG).create().unwrap(),
        offs,
    )
}

child_entry! {
    fn increment_child() {
        let seg = OpenOptions::new(TAG).from_inherited(KEY).unwrap();
        let (_, o) = layout();
        let lock = seg.get(o.lock).unwrap();
        let counter = seg.get(o.counter).unwrap();
        for _ in 0..INCREMENTS {
            let _g = lock.lock().unwrap();
            // Deliberately not an atomic add: only the lock keeps updates from being lost.
            let v = counter.load(Ordering::Relaxed);
            counter.store(v + 1, Ordering::Relaxed);
        }
    }
}

#[test]
fn four_processes_increment_under_the_lock() {
    let (seg, o) = create();
    let children: Vec<_> = (0..4)
        .map(|_| {
            let mut cmd = child!(increment_child).watchdog(WATCHDOG);
            seg.pass_to_command(cmd.command_mut(), KEY).unwrap();
            cmd.spawn()
        })
        .collect();
    for c in children {
        c.wait().assert_success();
    }
    assert_eq!(
        seg.get(o.counter).unwrap().load(Ordering::Relaxed),
        4 * INCREMENTS
    );
    assert!(!seg.get(o.lock).unwrap().is_locked());
}

#[test]
fn sigkilled_holder_gives_owner_died_then_repair_keeps_it_usable() {
    let (seg, o) = create();
    let lock = seg.get(o.lock).unwrap();
    let flag = seg.get(o.flag).unwrap();
    let child = fork_child(WATCHDOG, || {
        let g = lock.lock().unwrap();
        flag.store(1, Ordering::Release);
        ipc_sync::futex::wake_all(flag);
        // Hold the lock until killed.
        loop {
            ipc_sync::futex::wait(flag, 1, None);
            let _ = &g;
        }
    });
    while flag.load(Ordering::Acquire) == 0 {
        ipc_sync::futex::wait(
            flag,
            0,
            Some(ipc_sync::Deadline::after(Duration::from_millis(50))),
        );
    }
    assert!(lock.is_locked());
    assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
    child.kill();
    // The parent blocks in lock() while the child dies; it must notice (no timing assertion,
    // the test's own deadline is only a guard against hanging forever).
    let mut guard = match lock.lock_timeout(Duration::from_secs(20)) {
        Err(LockTimeoutError::OwnerDied(g)) => g,
        other => panic!("expected OwnerDied, got {other:?}"),
    };
    guard.mark_consistent();
    drop(guard);
    child.wait();
    assert!(lock.lock().is_ok());
}

#[test]
fn unrepaired_takeover_makes_the_lock_not_recoverable_everywhere() {
    let (seg, o) = create();
    let lock = seg.get(o.lock).unwrap();
    // A child that takes the lock and exits without unlocking (exit, not a signal).
    fork_child(WATCHDOG, || {
        std::mem::forget(lock.lock().unwrap());
        0
    })
    .wait()
    .assert_success();
    let guard = lock
        .try_lock()
        .unwrap_err()
        .into_guard()
        .expect("OwnerDied");
    drop(guard); // not marked consistent
    // Another process sees NotRecoverable too.
    fork_child(WATCHDOG, || match lock.lock() {
        Err(LockError::NotRecoverable) => 0,
        _ => 1,
    })
    .wait()
    .assert_success();
    assert!(matches!(lock.lock(), Err(LockError::NotRecoverable)));
}

extern "C" fn noop(_: i32) {}

fn install_noop_sigusr1() {
    // No SA_RESTART: the futex wait really returns EINTR.
    let action = SigAction::new(SigHandler::Handler(noop), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler does nothing, so it is async-signal-safe and touches no state.
    unsafe { sigaction(Signal::SIGUSR1, &action) }.unwrap();
}

#[test]
fn signals_during_a_wait_neither_wake_it_early_nor_lose_the_wake_up() {
    let (seg, o) = create();
    let lock = seg.get(o.lock).unwrap();
    let flag = seg.get(o.flag).unwrap();
    let counter = seg.get(o.counter).unwrap();
    let guard = lock.lock().unwrap();
    let mut child = fork_child(WATCHDOG, || {
        install_noop_sigusr1();
        flag.store(1, Ordering::Release);
        // Timed and untimed forms: neither may return before the parent releases.
        let r = lock.lock_timeout(Duration::from_secs(25));
        let ok = r.is_ok() && counter.load(Ordering::Acquire) == 1;
        drop(r);
        if ok { 0 } else { 1 }
    });
    while flag.load(Ordering::Acquire) == 0 {
        std::thread::yield_now();
    }
    for _ in 0..20 {
        child.signal(Signal::SIGUSR1);
        // Not synchronisation: spaces the signals out so some land while the child sleeps.
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        child.wait_timeout(Duration::from_millis(50)).is_none(),
        "woke early"
    );
    counter.store(1, Ordering::Release);
    drop(guard);
    child.wait().assert_success();
}

/// A corrupted segment: the lock word names a live thread (`init`, tid 1) that never took it
/// and never wrote an owner record. Waiters must recover the lock, not wait forever.
#[test]
fn a_garbage_owner_in_a_corrupted_segment_is_recovered_not_waited_on() {
    use std::os::unix::fs::FileExt;
    let _watchdog = ipc_tests::watchdog("garbage owner", Duration::from_secs(60));
    let mut layout = Layout::new();
    let off = layout.add::<Lock>().unwrap();
    let seg = SegmentBuilder::new(layout.size()).create().unwrap();
    let file = std::fs::File::from(seg.fd().try_clone_to_owned().unwrap());
    // The lock word is the first field of the lock, at the start of the payload.
    let at = (ipc_shm::PAYLOAD_OFFSET + off.get()) as u64;
    file.write_all_at(&1u32.to_le_bytes(), at).unwrap();
    let lock = seg.get(off).unwrap();
    assert!(lock.is_locked());
    match lock.lock_timeout(Duration::from_secs(30)) {
        Err(LockTimeoutError::OwnerDied(mut g)) => g.mark_consistent(),
        Ok(_) => panic!("the garbage owner cannot have released the lock"),
        Err(e) => panic!("expected OwnerDied, got {e}"),
    }
    assert!(!lock.is_locked());
    drop(lock.lock().unwrap());
}
